"""Fuzz `kiln serve` with random and mutated KServe v2 requests: python -m tests.fuzz.requests [--cases 5000]

Each case (its number is its seed) is one HTTP request built from a valid one (JSON or binary tensors, plain or
gzip) and then damaged: JSON values swapped for other types and extremes, keys dropped or added, nesting, shapes
and sizes, header values, methods and paths, or raw bytes anywhere in the request. It is sent over loopback to a
server of the small test CNN. A finding is an answer >= 500, an error that is not JSON, no answer to a request
that was complete, or a server that no longer answers /v2/health/live.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import random
import socket
import time
from collections import Counter

from benchmarks import serve_soak

MODEL = "cnn"
SHAPE = [1, 3, 16, 16]
PATHS = ["/v2/models/cnn/infer", "/v2/models/cnn/versions/1/infer", "/v2/models/cnn", "/v2/models/cnn/ready",
         "/v2", "/v2/health/live", "/v2/health/ready", "/v2/repository/index", "/metrics",
         "/v2/models/nope/infer", "/v2/models/cnn/versions/9/infer"]
METHODS = ["POST", "GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW", ""]
_WEIRD = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -2 ** 63, 2 ** 64, 10 ** 30, 1.5, -0.0, 1e308, "",
          "x" * 1000, "FP32", "\u0000", "\ud7ff\u00e9", [], [1], [[]], {}, {"a": 1}, [True, 3, 16, 16],
          [2 ** 62, 4], [2 ** 32, 2 ** 32, 3, 1], [0, 10 ** 30], [-1], "NaN"]


def _valid(rng: random.Random) -> tuple[dict, bytes]:
    """A valid infer request header and the binary tail it refers to (empty for JSON data)."""
    values = [rng.uniform(-1, 1) for _ in range(768)]
    item = {"name": "input", "shape": list(SHAPE), "datatype": "FP32"}
    request = {"inputs": [item]}
    if rng.random() < 0.3:
        request["id"] = f"req-{rng.randrange(1000)}"
    if rng.random() < 0.3:
        request["outputs"] = [{"name": "y", "parameters": {"binary_data": rng.random() < 0.5}}]
    if rng.random() < 0.5:
        import numpy as np  # noqa: PLC0415 - only to pack the floats

        tail = np.asarray(values, np.float32).tobytes()
        item["parameters"] = {"binary_data_size": len(tail)}
        return request, tail
    item["data"] = values
    return request, b""


def _paths(node, prefix=()):
    """Every (path, value) inside a JSON NODE."""
    yield prefix, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:4]):
            yield from _paths(value, (*prefix, index))


def _set(node, path, value):
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _mutate_json(rng: random.Random, request: dict) -> dict:
    request = copy.deepcopy(request)
    for _ in range(rng.randint(1, 3)):
        spots = [p for p, _v in _paths(request) if p]
        if not spots:
            break
        path = rng.choice(spots)
        move = rng.random()
        parent = request
        for key in path[:-1]:
            parent = parent[key]
        if move < 0.55:
            _set(request, path, copy.deepcopy(rng.choice(_WEIRD)))
        elif move < 0.7 and isinstance(parent, dict):
            del parent[path[-1]]
        elif move < 0.8 and isinstance(parent, dict):
            parent[rng.choice(["parameters", "data", "shape", "datatype", "name", "extra"])] = rng.choice(_WEIRD)
        elif move < 0.9:
            _set(request, path, f"{_DEEP}{rng.choice([30, 33, 200, 5000])}")  # nested in the text (see _dumps)
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(parent[0]))  # a duplicate input / output
    return request


_DEEP = "@@deep-nesting@@"


def _dumps(request: dict) -> bytes:
    """REQUEST as JSON, each _DEEP marker replaced by lists nested that deep (too deep for json.dumps itself)."""
    text = json.dumps(request)
    while (at := text.find(f'"{_DEEP}')) >= 0:
        end = text.index('"', at + 1)
        depth = int(text[at + 1 + len(_DEEP):end])
        text = text[:at] + "[" * depth + "]" * depth + text[end + 1:]
    return text.encode()


def case(seed: int) -> tuple[bytes, bool]:
    """(raw HTTP request, whether it is complete) of fuzz case SEED; an incomplete one may go unanswered."""
    rng = random.Random(seed)
    request, tail = _valid(rng)
    kind = rng.random()
    if kind < 0.5:
        request = _mutate_json(rng, request)
    header = _dumps(request)
    body = header + tail
    headers = {"Host": "fuzz", "Content-Type": "application/json"}
    if tail:
        headers["Inference-Header-Content-Length"] = str(len(header))
    method, path = "POST", rng.choice(PATHS[:2])
    complete = True
    if 0.5 <= kind < 0.62:  # binary framing
        cut = rng.choice([0, 1, len(header) - 1, len(header) + 1, len(body) + 5, -3, 2 ** 63, "x", " 5"])
        headers["Inference-Header-Content-Length"] = str(cut)
        if rng.random() < 0.5:
            body = body[: rng.randrange(len(body) + 1)] if rng.random() < 0.5 else body + bytes(rng.randrange(1, 99))
    elif 0.62 <= kind < 0.72:  # encodings
        choice = rng.choice(["gzip", "gzip-cut", "gzip-garbage", "br", "deflate", "GZIP", "identity", "gzip, gzip"])
        headers["Content-Encoding"] = choice.split("-")[0]
        body = gzip.compress(body) if choice.startswith("gzip") or choice == "GZIP" else body
        if choice == "gzip-cut":
            body = body[: rng.randrange(len(body))]
        elif choice == "gzip-garbage":
            body = bytes(rng.randrange(256) for _ in range(64)) + body
    elif 0.72 <= kind < 0.82:  # methods, paths, names
        method = rng.choice(METHODS)
        path = rng.choice(PATHS + [f"/v2/models/{'%' * rng.randrange(1, 4)}{'é' * rng.randrange(300)}/infer",
                                   "/v2/models/" + "a" * rng.choice([100, 9000]), "//v2/../models", "*", "/v2?x=1"])
        if rng.random() < 0.5:
            body = b""
    elif 0.82 <= kind < 0.9:  # header values
        name = rng.choice(["Content-Length", "Transfer-Encoding", "Authorization", "Content-Type", "Expect",
                           "Connection", "X-" + "h" * 50])
        headers[name] = rng.choice(["", "-1", "0", "abc", "1e3", "chunked", "100-continue", "close", "\t",
                                    "x" * 70_000, str(2 ** 64)])
    method_line = f"{method} {path} HTTP/1.1".encode("utf-8", "surrogatepass")
    if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        headers["Content-Length"] = str(len(body))
    if headers.get("Transfer-Encoding") == "chunked":
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if rng.random() < 0.7 else b"zz\r\n" + body
    declared = headers.get("Content-Length", "")
    complete = not (declared.isdigit() and int(declared) > len(body)) and headers.get("Expect") != "100-continue"
    raw = method_line + b"\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + body
    if kind >= 0.9:  # raw bytes anywhere
        raw = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        complete = False  # a flipped byte may have broken the framing: an unanswered request is allowed
    return bytes(raw), complete


def send(port: int, raw: bytes, wait: float = 30.0) -> tuple[int | None, bytes]:
    """(status or None, body) of the server's answer to RAW, waiting up to WAIT seconds; None when it closed (or
    stayed silent) without answering."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(raw)
            while not _whole(answer, raw.startswith(b"HEAD ")) and (piece := sock.recv(1 << 16)):
                answer += piece
        except OSError:  # reset, or silence past WAIT (a request still waiting for the body it announced)
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1."):
        return None, b""
    return int(head.split()[1]), body


def _whole(answer: bytes, head_only: bool) -> bool:
    """Whether ANSWER holds a complete response: its head, and Content-Length bytes of body unless HEAD_ONLY (the
    answer to a HEAD request has none)."""
    head, found, body = answer.partition(b"\r\n\r\n")
    if not found or head_only:
        return found
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return not lengths or len(body) >= lengths[0] or head.startswith(b"HTTP/1.1 1")


def judge(raw: bytes, complete: bool, status: int | None, body: bytes) -> str | None:
    """What is wrong with this answer, or None."""
    if status is None:
        return None if not complete else "no answer to a complete request"
    if status >= 500:
        return f"answered {status}: {body[:200]!r}"
    if status >= 400 and not raw.startswith(b"HEAD "):
        try:
            error = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            return f"answered {status} without a JSON error: {body[:200]!r}"
        if not isinstance(error, str) or not error:
            return f"answered {status} with an empty error"
    return None


def fuzz(port: int, cases: range, say=print) -> dict:
    """Send every case of CASES to the server on PORT; outcome counts by status and the findings."""
    statuses, findings = Counter(), []
    started = time.monotonic()
    for seed in cases:
        raw, complete = case(seed)
        status, body = send(port, raw, 30.0 if complete else 1.0)
        statuses[str(status)] += 1
        problem = judge(raw, complete, status, body)
        if problem is None and serve_soak.request(port, "/v2/health/live")[0] != 200:
            problem = "the server stopped answering /v2/health/live"
        if problem:
            findings.append({"case": seed, "problem": problem, "request": raw[:300].decode("latin1")})
            say(f"case {seed}: {problem}")
    return {"cases": len(cases), "seconds": round(time.monotonic() - started, 1), "statuses": dict(statuses),
            "findings": findings}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--start", type=int, default=0)
    args = parser.parse_args(argv)
    import compiler  # noqa: PLC0415
    from benchmarks.zoo import resnet  # noqa: PLC0415
    from runtime.scratch import scratch_dir  # noqa: PLC0415

    import onnx  # noqa: PLC0415

    with scratch_dir("kiln-fuzz-serve-") as tmp:
        onnx.save(resnet((1,), width=8, size=16, classes=4, batch="N"), str(tmp / "cnn.onnx"))
        artifact = compiler.compile(tmp / "cnn.onnx", target="auto", output=tmp / "cnn.so").path
        server, port = serve_soak.start_server(artifact, tmp / "serve.log")
        try:
            result = fuzz(port, range(args.start, args.start + args.cases))
        finally:
            server.terminate()
            server.wait(60)
    print(json.dumps({k: v for k, v in result.items() if k != "findings"}))
    print(f"{len(result['findings'])} finding(s)")


if __name__ == "__main__":
    main()
