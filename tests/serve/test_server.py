"""The server process: Prometheus metrics, graceful shutdown with requests in flight, and the one-line
errors of `kiln serve`."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import compiler
from benchmarks.zoo import resnet
from tests.models import ROOT, save
from tests.serve.helpers import infer, request, running, serving_process


def test_metrics_count_requests_by_model_version_and_status(built):
    _, artifact = built
    with running([artifact]) as server:
        infer(server, np.zeros((1, 3, 16, 16), np.float32))
        request(server, "/v2/models/cnn/infer", b"{bad")
        text = request(server, "/metrics")[2].decode()
        assert 'kiln_requests_total{model="cnn",status="200",version="1"} 1.0' in text
        assert 'kiln_requests_total{model="cnn",status="400",version="1"} 1.0' in text
        for phase in ("queue", "inference", "total"):
            assert f'kiln_request_seconds_count{{model="cnn",phase="{phase}",version="1"}} 1.0' in text
        assert "kiln_models_loaded 1.0" in text


def _in_flight(probe) -> int:
    """The server's in-flight gauge, less the scrape that reads it."""
    text = request(probe, "/metrics")[2].decode()
    return int(float(text.split("\nkiln_requests_in_flight ")[1].split()[0])) - 1


def _refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return False
    except ConnectionRefusedError:
        return True


def _until(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_graceful_shutdown_finishes_requests_in_flight(built, tmp_path):
    # Each request stops one byte short of its body, so all 32 are in flight (counted from their headers) when
    # the signal goes, whatever the machine's speed; their last bytes go once the server has stopped listening.
    heavy = compiler.compile(save(resnet((2, 2), width=64, size=224, classes=4, batch=1), tmp_path, "heavy"),
                             target="auto", output=tmp_path / "heavy.so")
    with serving_process([heavy.path]) as (process, probe):
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtvm_runtime.so" in maps and "libtvm_compiler.so" not in maps  # serving needs TVM's runtime only
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 224, 224], "datatype": "FP32",
                                       "data": [0.0] * (3 * 224 * 224)}]}).encode()
        head = (f"POST /v2/models/heavy/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        clients = [socket.create_connection(("127.0.0.1", probe.port), timeout=60) for _ in range(32)]
        for c in clients:
            c.sendall(head + body[:-1])
        _until(lambda: _in_flight(probe) == 32, "32 requests in flight")
        process.send_signal(signal.SIGTERM)
        _until(lambda: _refuses_connections(probe.port), "the server to stop listening")
        for c in clients:
            c.sendall(body[-1:])
        answers = []
        for c in clients:
            with c, c.makefile("rb") as stream:
                answers.append(stream.read())
        for answer in answers:  # every request in flight was answered
            head_bytes, _, payload = answer.partition(b"\r\n\r\n")
            assert head_bytes.startswith(b"HTTP/1.1 200"), answer[:300]
            assert json.loads(payload)["outputs"][0]["shape"] == [1, 4]
        assert process.wait(60) == 0
        said = process.stderr.read()
        assert "shutting down: 32 request(s) in flight" in said, said


def test_serve_cli_errors_are_one_line():
    done = subprocess.run([sys.executable, "-m", "compiler.cli", "serve", "/no/such/models"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: model source(s) not found: /no/such/models (pass artifacts (.so) or a "
                                   "repository folder of NAME/VERSION/model.so)")
