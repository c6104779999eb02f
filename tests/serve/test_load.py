"""The server under load: dynamic batching, overload shed with 503, request timeouts (504), and a bounded
load with no errors."""

from __future__ import annotations

import concurrent.futures
import json

import numpy as np
from tritonclient.utils import InferenceServerException

import compiler
from benchmarks.zoo import resnet
from runtime.bench import outputs_match
from tests.models import save
from tests.serve.helpers import client, concurrent_infer, expected, first_output, infer, request, running


def test_dynamic_batching_gives_each_request_its_own_rows(built):
    onnx_path, artifact = built
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((1 + i % 2, 3, 16, 16)).astype(np.float32) for i in range(8)]
    with running([artifact], max_batch=8, batch_timeout_ms=200) as server:
        results = concurrent_infer(server, arrays)
        for x, result in zip(arrays, results):
            assert not isinstance(result, Exception), result
            ok, error = outputs_match({"y": first_output(result)}, {"y": expected(onnx_path, x)})
            assert ok, error
        metrics = request(server, "/metrics")[2].decode()
        sizes = {line.split("}")[0]: float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("kiln_batch_size_bucket")}
        assert sizes['kiln_batch_size_bucket{le="1.0",model="cnn",version="1"'] < 8  # some ran batched


def test_overload_is_shed_with_503_and_the_server_recovers(built, tmp_path):
    onnx_path, _ = built
    heavy = compiler.compile(save(resnet((1, 1), width=32, size=64, classes=4, batch=1), tmp_path, "heavy"),
                             target="auto", output=tmp_path / "heavy.so")
    x = np.zeros((1, 3, 64, 64), np.float32)
    with running([heavy.path], max_queue=1) as server:
        results = concurrent_infer(server, [x] * 24, model="heavy")
        statuses = [r.status() if isinstance(r, InferenceServerException) else "200" for r in results]
        assert "503" in statuses and "200" in statuses, statuses
        assert set(statuses) <= {"200", "503"}
        shed = next(r for r in results if isinstance(r, InferenceServerException))
        assert "overloaded" in shed.message()
        assert client(server).is_server_live()
        assert first_output(infer(server, x, model="heavy")).shape == (1, 4)
        metrics = request(server, "/metrics")[2].decode()
        assert 'kiln_requests_total{model="heavy",status="503",version="1"}' in metrics


def test_request_timeout_answers_504(built):
    _, artifact = built
    with running([artifact], request_timeout_s=1e-6) as server:
        status, _, raw = request(server, "/v2/models/cnn/infer", {"inputs": [
            {"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768}]})
        assert status == 504 and "--request-timeout-s" in json.loads(raw)["error"]
        assert client(server).is_server_live()


def test_bounded_load_has_no_errors(built):
    onnx_path, artifact = built
    x = np.random.default_rng(4).standard_normal((1, 3, 16, 16)).astype(np.float32)
    reference = expected(onnx_path, x)
    with running([artifact]) as server:  # 1,000 requests from 32 threads; the queue limit (64) is never reached
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(lambda _i: infer(server, x), range(1000)))
        counted = [line for line in request(server, "/metrics")[2].decode().splitlines()
                   if line.startswith("kiln_requests_total{")]
        assert counted == ['kiln_requests_total{model="cnn",status="200",version="1"} 1000.0']
    assert all(outputs_match({"y": first_output(r)}, {"y": reference})[0] for r in results)
