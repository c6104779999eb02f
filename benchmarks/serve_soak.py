"""`kiln serve` against a hostile client and a careless operator, on localhost: rounds of aborted uploads, chunked
bodies over the limit, gzip bombs and floods of unknown model names, with the server's resident memory and
/metrics size after each round (flat RSS and a bounded /metrics are the pass mark); then the served artifact
rewritten in place under load (the server must live through it). Writes the "Serving soak" section of RESULTS.md.

    python -m benchmarks.serve_soak [--rounds 20] [--server-root DIR]

--server-root runs the server from another checkout (an older commit, to compare).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

import compiler
from runtime.atomic import atomic_write
from runtime.scratch import scratch_dir

from . import machine, report, serve_load
from .zoo import resnet

HERE = Path(__file__).resolve().parent
ABORTED_BYTES = 30_000_000  # each aborted upload sends this much (under the limit) and hangs up
LIMIT_MB = 40  # --max-body-mb of the soaked server
BOMB_BYTES = 1 << 30  # a gzip bomb inflates to this (about 1 MB on the wire)
NAMES_PER_FLOOD, NAME_BYTES = 100, 4000  # requests for unknown models per round, and each name's length


def _post_head(path: str, *headers: str) -> bytes:
    return ("\r\n".join([f"POST {path} HTTP/1.1", "Host: soak", *headers]) + "\r\n\r\n").encode()


def abort_upload(port: int, size: int = ABORTED_BYTES) -> None:
    """Announce a SIZE-byte infer body, send all but its last MB, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_post_head("/v2/models/cnn/infer", f"Content-Length: {size}"))
        piece = b" " * (1 << 20)
        for _ in range(size // len(piece)):
            sock.sendall(piece)
        time.sleep(0.05)


def chunked_over_limit(port: int, size: int) -> int:
    """The HTTP status the server answers to a chunked infer body of SIZE bytes (past the limit: 413)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_post_head("/v2/models/cnn/infer", "Transfer-Encoding: chunked"))
        piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
        try:
            for _ in range(size >> 20):
                sock.sendall(piece)
        except OSError:  # the server answered 413 and closed: the rest is refused
            pass
        return int(sock.recv(1 << 16).split()[1])


def gzip_bomb(size: int = BOMB_BYTES) -> bytes:
    """A gzip body that inflates to SIZE zero bytes."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"\0" * (1 << 24)
    return b"".join(deflater.compress(block) for _ in range(size // len(block))) + deflater.flush()


def request(port: int, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of one plain HTTP request; status 0 when the connection failed without an answer."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        try:
            return err.code, err.read()
        except OSError:  # the server answered and then reset the connection
            return err.code, b""
    except (OSError, http.client.HTTPException):
        return 0, b""  # no answer at all


def rss_mb(pid: int) -> float:
    """Resident memory of process PID in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def one_round(port: int, bomb: bytes, round_index: int) -> dict:
    """One round of every hostile request class; the statuses the server answered, by class."""
    abort_upload(port)
    statuses = {"aborted": "hung up", "chunked_over_limit": chunked_over_limit(port, (LIMIT_MB + 8) << 20)}
    status, body = request(port, "/v2/models/cnn/infer", bomb, {"Content-Encoding": "gzip"})
    statuses["gzip_bomb"] = status
    statuses["gzip_bomb_json"] = body.startswith(b"{")
    flood = {request(port, f"/v2/models/{'n' * NAME_BYTES}{round_index}-{i}/infer", b"{}")[0]
             for i in range(NAMES_PER_FLOOD)}
    statuses["unknown_models"] = sorted(flood)
    return statuses


def soak(port: int, pid: int, rounds: int, progress=print) -> dict:
    """ROUNDS rounds against the server on PORT (process PID): RSS after the first round and after each later
    one, /metrics size at the end, and every status seen."""
    bomb = gzip_bomb()
    seen, rss = [], []
    for index in range(rounds):
        seen.append(one_round(port, bomb, index))
        time.sleep(0.2)
        rss.append(round(rss_mb(pid), 1))
        progress(f"round {index + 1}/{rounds}: RSS {rss[-1]} MB")
    metrics = request(port, "/metrics")[1]
    live = request(port, "/v2/health/live")[0] == 200
    return {"rounds": rounds, "bomb_bytes": len(bomb), "rss_mb": rss, "growth_after_first_round_mb": round(rss[-1] - rss[0], 1),
            "metrics_bytes": len(metrics), "live": live,
            "statuses": {key: sorted({json.dumps(s[key]) for s in seen}) for key in seen[0]}}


def infer_body(shape=(1, 3, 16, 16)) -> bytes:
    """A JSON infer request for the soak model (zeros)."""
    count = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                                   "data": [0.0] * count}]}).encode()


def rewrite_under_load(port: int, pid: int, served: Path, original: Path, other: Path, cycles: int,
                       progress=print) -> dict:
    """CYCLES times, while 4 threads send infer requests: `cp` another artifact over the SERVED file (in place,
    same inode), truncate it, fill it with random bytes, `cp` the ORIGINAL back and wait until it serves again.
    The answers by status, and whether the server (process PID) lived through it all."""
    answers: dict[int, int] = {}
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            status = request(port, "/v2/models/cnn/infer", infer_body())[0]
            answers[status] = answers.get(status, 0) + 1

    rng = np.random.default_rng(0)
    rewrites = [lambda: shutil.copyfile(other, served), lambda: os.truncate(served, served.stat().st_size // 2),
                lambda: served.write_bytes(rng.bytes(served.stat().st_size)),
                lambda: shutil.copyfile(original, served)]
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    recovered = 0
    try:
        for cycle in range(cycles):
            for rewrite in rewrites:
                time.sleep(0.3)
                rewrite()
            deadline = time.monotonic() + 30
            while request(port, "/v2/models/cnn/infer", infer_body())[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            recovered += request(port, "/v2/models/cnn/infer", infer_body())[0] == 200
            progress(f"rewrite cycle {cycle + 1}/{cycles}: {answers}")
            if not Path(f"/proc/{pid}").exists():
                break
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    return {"cycles": cycles, "rewrites": cycles * len(rewrites), "answers": dict(sorted(answers.items())),
            "recovered_cycles": recovered, "alive": request(port, "/v2/health/live")[0] == 200}


def start_server(source: Path, log: Path, root: Path = HERE.parent) -> tuple[subprocess.Popen, int]:
    """`kiln serve SOURCE` as the soak runs it (--max-body-mb LIMIT_MB, rescanned every 0.1 s), from checkout
    ROOT; (process, port)."""
    return serve_load.start_server(source, ["--max-body-mb", str(LIMIT_MB), "--poll-s", "0.1"], log, root)


def soak_section(result: dict) -> list[str]:
    """The RESULTS.md section of a soak RESULT."""
    rss, rewrite = result["rss_mb"], result["rewrite"]
    return ["", "## Serving soak", "",
            f"{result['date']}, {result['machine']}; `kiln serve` (--max-body-mb {LIMIT_MB}) on a small CNN, "
            f"{result['rounds']} rounds, each: one {ABORTED_BYTES // 1_000_000} MB upload aborted, one chunked body "
            f"past the limit, one gzip bomb ({result['bomb_bytes'] // 1000} KB inflating to {BOMB_BYTES >> 30} GB), "
            f"{NAMES_PER_FLOOD} requests for unknown models with {NAME_BYTES}-byte names.", "",
            "| RSS after round 1 | after the last | growth | /metrics | statuses | live at the end |",
            "| ---: | ---: | ---: | ---: | --- | --- |",
            f"| {rss[0]} MB | {rss[-1]} MB | {result['growth_after_first_round_mb']} MB | "
            f"{result['metrics_bytes']} bytes | "
            + "; ".join(f"{k}: {', '.join(v)}" for k, v in result["statuses"].items())
            + f" | {'yes' if result['live'] else 'no'} |", "",
            f"Rewriting the served file under load (4 client threads): {rewrite['rewrites']} rewrites in "
            f"{rewrite['cycles']} cycles (`cp` of another artifact in place, truncation to half, random bytes, `cp` "
            f"of the original back); answers by status {rewrite['answers']}; the original served again after "
            f"{rewrite['recovered_cycles']} of {rewrite['cycles']} cycles; server "
            + ("alive throughout." if rewrite["alive"] else f"dead (exit status {rewrite['exit_status']})."), "",
            "`python -m benchmarks.serve_soak` (`make soak-serve`) regenerates this section."]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--rewrite-cycles", type=int, default=10)
    parser.add_argument("--server-root", type=Path, default=HERE.parent)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    with scratch_dir("kiln-soak-") as tmp:
        built = {}
        for name, width in (("cnn", 8), ("other", 12)):
            onnx.save(resnet((1,), width=width, size=16, classes=4, batch="N"), str(tmp / f"{name}.onnx"))
            built[name] = compiler.compile(tmp / f"{name}.onnx", target="auto", output=tmp / f"{name}.so").path
        served = tmp / "repo" / "cnn" / "1" / "model.so"
        served.parent.mkdir(parents=True)
        shutil.copyfile(built["cnn"], served)
        server, port = start_server(tmp / "repo", tmp / "serve.log", args.server_root.resolve())
        try:
            result = soak(port, server.pid, args.rounds)
            result["rewrite"] = rewrite_under_load(port, server.pid, served, built["cnn"], built["other"],
                                                   args.rewrite_cycles)
        finally:
            server.terminate()
            server.wait(60)
        result["rewrite"]["exit_status"] = server.returncode
    result.update(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine.describe())
    print(json.dumps(result, indent=2))
    if not args.no_write and args.server_root.resolve() == HERE.parent:
        results_md = HERE / "RESULTS.md"
        atomic_write(results_md, report.with_section(results_md.read_text(), "## Serving soak", soak_section(result)))


if __name__ == "__main__":
    main()
