"""The server process: Prometheus metrics, graceful shutdown with requests in flight, and the one-line
errors of `kiln serve`."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

import compiler
from benchmarks.zoo import resnet
from tests.models import ROOT, save
from tests.serve.helpers import first_output, infer, request, running, serving_process


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


def test_graceful_shutdown_finishes_requests_in_flight(built, tmp_path):
    # 5-15 ms a run: the signal goes when the first of 32 answers is back, so the rest are still in the server
    heavy = compiler.compile(save(resnet((2, 2), width=64, size=224, classes=4, batch=1), tmp_path, "heavy"),
                             target="auto", output=tmp_path / "heavy.so")
    with serving_process([heavy.path]) as (process, probe):
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtvm_runtime.so" in maps and "libtvm_compiler.so" not in maps  # serving needs TVM's runtime only
        x = np.zeros((1, 3, 224, 224), np.float32)
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            futures = [pool.submit(infer, probe, x, "heavy") for _ in range(32)]
            concurrent.futures.wait(futures, timeout=60, return_when=concurrent.futures.FIRST_COMPLETED)
            process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        assert all(first_output(r).shape == (1, 4) for r in results)  # every request in flight was answered
        assert process.wait(60) == 0
        said = process.stderr.read()
        in_flight = int(said.split("shutting down: ")[1].split()[0])
        assert in_flight > 0, said


def test_serve_cli_errors_are_one_line():
    done = subprocess.run([sys.executable, "-m", "compiler.cli", "serve", "/no/such/models"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: model source(s) not found: /no/such/models (pass artifacts (.so) or a "
                                   "repository folder of NAME/VERSION/model.so)")
