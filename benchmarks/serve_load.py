"""`kiln serve` under load, on localhost: latency overhead over in-process runs, throughput at concurrency 32,
and load shedding at 4x the sustainable rate. Writes benchmarks/serving.json and the Serving section of RESULTS.md.

    python -m benchmarks.serve_load [--requests 5000] [--concurrency 32] [--overload-seconds 10]

The server (`kiln serve` in its own process) and this client share the machine's cores, as they would on one
host; each phase records the CPU time other processes used meanwhile (/proc/stat minus server and client).
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

import compiler
import runtime
from runtime.atomic import atomic_write
from runtime.bench import CLOCK_TICK, busy_cpu_seconds, measure, own_cpu_seconds

from . import machine, report
from .zoo import ZOO, batch_one_shapes

HERE = Path(__file__).resolve().parent


def _process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK  # utime, stime


class LoadMeter:
    """Outside load (cores) over a phase: busy CPU of the machine minus the server's and this process's."""

    def __init__(self, server_pid: int):
        self.pid = server_pid

    def __enter__(self):
        self.start = (busy_cpu_seconds(), own_cpu_seconds(), _process_cpu_seconds(self.pid), time.perf_counter())
        return self

    def __exit__(self, *_exc):
        busy, own, server, wall = (busy_cpu_seconds(), own_cpu_seconds(), _process_cpu_seconds(self.pid),
                                   time.perf_counter())
        outside = (busy - self.start[0]) - (own - self.start[1]) - (server - self.start[2])
        self.outside_cores = round(max(0.0, outside) / (wall - self.start[3]), 3)


class Client:
    """Binary KServe v2 infer requests over keep-alive connections, one per thread."""

    def __init__(self, port: int, model: str, feeds: dict[str, np.ndarray]):
        self.port, self.local = port, threading.local()
        inputs = [{"name": n, "shape": list(a.shape), "datatype": "FP32",
                   "parameters": {"binary_data_size": a.nbytes}} for n, a in feeds.items()]
        header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
        self.body = header + b"".join(a.tobytes() for a in feeds.values())
        self.headers = {"Inference-Header-Content-Length": str(len(header)),
                        "Content-Type": "application/octet-stream"}
        self.path = f"/v2/models/{model}/infer"

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self.local, "conn", None) is None:
            self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        return self.local.conn

    def infer(self) -> tuple[int, float]:
        """(HTTP status, latency ms) of one request; status 0 when the connection failed."""
        start = time.perf_counter()
        try:
            conn = self._connection()
            conn.request("POST", self.path, self.body, self.headers)
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self.local.conn = None
            status = 0
        return status, (time.perf_counter() - start) * 1e3

    def get(self, path: str) -> tuple[int, float]:
        start = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status, (time.perf_counter() - start) * 1e3


def _percentiles(latencies: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3)}


def closed_loop(client: Client, requests: int, concurrency: int) -> dict:
    """REQUESTS requests from CONCURRENCY threads, each sending its next request when the last one returned."""
    with ThreadPoolExecutor(concurrency) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda _i: client.infer(), range(requests)))
        seconds = time.perf_counter() - started
    latencies = [ms for status, ms in results if status == 200]
    return {"requests": requests, "concurrency": concurrency, "errors": sum(s != 200 for s, _ in results),
            "seconds": round(seconds, 2), "throughput_per_s": round(len(latencies) / seconds, 1),
            **_percentiles(latencies)}


def open_loop(client: Client, rate: float, seconds: float) -> dict:
    """Requests sent at RATE per second for SECONDS, whether or not earlier ones returned (an overload)."""
    results, lock = [], threading.Lock()
    probes = []

    def send():
        outcome = client.infer()
        with lock:
            results.append(outcome)

    with ThreadPoolExecutor(256) as pool:
        started = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - started < seconds:
            due = int((now - started) * rate) + 1
            for _ in range(due - sent):
                pool.submit(send)
            sent = due
            if len(probes) < (now - started):  # one liveness probe a second, during the overload
                probes.append(client.get("/v2/health/live"))
            time.sleep(0.002)
    statuses = [s for s, _ in results]
    return {"rate_per_s": round(rate, 1), "seconds": seconds, "sent": len(results),
            "ok": statuses.count(200), "shed_503": statuses.count(503),
            "other": len(statuses) - statuses.count(200) - statuses.count(503),
            "live_probes": len(probes), "live_probes_ok": sum(s == 200 for s, _ in probes),
            "live_probe_max_ms": round(max((ms for _, ms in probes), default=0.0), 2),
            **_percentiles([ms for s, ms in results if s == 200] or [0.0])}


def start_server(source: Path, flags: list[str], log: Path, root: Path = HERE.parent
                 ) -> tuple[subprocess.Popen, int]:
    """`kiln serve SOURCE FLAGS` on a free port, run from checkout ROOT, its messages going to the file LOG (a pipe
    nobody reads would fill and block it); returns the process and its port."""
    with open(log, "w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "compiler.cli", "serve", str(source), "--port", "0",
                                    *flags], cwd=root, stderr=sink)
    deadline = time.monotonic() + 120
    while "serving" not in (text := log.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"kiln serve did not start: {text.strip()[-300:]}")
        time.sleep(0.1)
    return process, int(text.split("http://127.0.0.1:")[1].split()[0])


def run(model: str, requests: int, concurrency: int, overload_seconds: float, max_queue: int) -> dict:
    """Every phase on MODEL (a benchmark zoo name); returns the JSON-ready results."""
    with tempfile.TemporaryDirectory(prefix="kiln-serve-bench-") as tmp:
        onnx_path = Path(tmp) / f"{model}.onnx"
        proto = ZOO[model]()
        onnx.save(proto, str(onnx_path))
        artifact = compiler.compile(onnx_path, target="auto", output=Path(tmp) / f"{model}.so",
                                    input_shapes=batch_one_shapes(proto)).path
        loaded = runtime.load(artifact, threads=2)
        target = loaded.manifest.target
        feeds = runtime.bench.random_inputs(loaded.inputs)
        in_process = measure(lambda: loaded.run(feeds), repeat=200, warmup=5)
        del loaded
        server, port = start_server(artifact, ["--max-queue", str(max_queue), "--poll-s", "0"],
                                    Path(tmp) / "serve.log")
        try:
            client = Client(port, model, feeds)
            for _ in range(10):
                client.infer()
            with LoadMeter(server.pid) as single_load:
                single = closed_loop(client, 300, 1)
            with LoadMeter(server.pid) as load_load:
                load = closed_loop(client, requests, concurrency)
            sustainable = load["throughput_per_s"]
            with LoadMeter(server.pid) as over_load:
                overload = open_loop(client, 4 * sustainable, overload_seconds)
            time.sleep(1.0)
            recovery = closed_loop(client, 50, 1)
            live = client.get("/v2/health/live")[0] == 200
        finally:
            server.terminate()
            server.wait(60)
    single["outside_load_cores"] = single_load.outside_cores
    load["outside_load_cores"] = load_load.outside_cores
    overload["outside_load_cores"] = over_load.outside_cores
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine.describe(),
        "model": model, "target": target,
        "in_process": {"median_ms": round(in_process.median_ms, 3), "p90_ms": round(in_process.p90_ms, 3),
                       "outside_load_cores": round(in_process.outside_load, 3)},
        "single": single, "load": load, "overload": overload,
        "recovery": {"errors": recovery["errors"], "p50_ms": recovery["p50_ms"], "live": live},
        "max_queue": max_queue,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--overload-seconds", type=float, default=10.0)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    result = run(args.model, args.requests, args.concurrency, args.overload_seconds, args.max_queue)
    print("\n".join(report.serving_section(result)))
    if not args.no_write:
        atomic_write(HERE / "serving.json", json.dumps(result, indent=2) + "\n")
        results_md = HERE / "RESULTS.md"
        atomic_write(results_md, report.with_section(results_md.read_text(), "## Serving",
                                                     report.serving_section(result)))


if __name__ == "__main__":
    main()
