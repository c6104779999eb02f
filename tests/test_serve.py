"""`kiln serve`: the KServe v2 protocol checked with a real client (tritonclient), versions and hot reload, batching,
overload, limits, auth, metrics and graceful shutdown; every numerical result against ONNX Runtime."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

import compiler
from benchmarks.zoo import resnet
from runtime.bench import outputs_match
from runtime.references import onnxruntime_session
from runtime.serve import ServeOptions, Server
from tests.models import save

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(onnx path, artifact path) of a small CNN with a symbolic batch dimension."""
    folder = tmp_path_factory.mktemp("serve")
    path = save(resnet((1,), width=8, size=16, classes=4, batch="N"), folder, "cnn")
    artifact = compiler.compile(path, target="auto", output=folder / "cnn.so")
    return path, artifact.path


@contextmanager
def running(sources, **options):
    """A Server on a free localhost port, run on its own event loop in a thread; yields it."""
    started, stop, box = threading.Event(), threading.Event(), {}

    async def main():
        server = Server(sources, ServeOptions(port=0, **options))
        box["changes"] = await server.start()
        box["server"] = server
        started.set()
        while not stop.is_set():
            await asyncio.sleep(0.02)
        await server.stop()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert started.wait(60), "the server did not start"
    try:
        yield box["server"]
    finally:
        stop.set()
        thread.join(60)


def client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.port}", concurrency=8)


def request(server, path: str, body: bytes | dict | None = None, headers: dict | None = None, method=None):
    """(status, headers, body bytes) of one plain HTTP request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, headers=headers or {},
                                 method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def expected(onnx_path, x):
    session = onnxruntime_session(str(onnx_path), threads=1)
    return session.run(None, {"input": x})[0]


def infer(server, x, model="cnn", version="", binary=True):
    """One infer call through tritonclient; every output comes back (binary unless BINARY is False)."""
    c = client(server)
    inp = triton.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput(server_output(server, model), binary_data=False)]
    return c.infer(model, [inp], model_version=version, outputs=outputs)


def server_output(server, model) -> str:
    return server.repository.get(model).model.outputs[0].name


def first_output(result) -> np.ndarray:
    return result.as_numpy(result.get_response()["outputs"][0]["name"])


def test_protocol_with_a_real_kserve_v2_client(built):
    onnx_path, artifact = built
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with running([artifact]) as server:
        c = client(server)
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("cnn")
        meta = c.get_model_metadata("cnn")
        assert meta["name"] == "cnn" and meta["versions"] == ["1"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
        assert meta["outputs"][0]["datatype"] == "FP32" and meta["outputs"][0]["shape"] == [-1, 4]
        assert c.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_repository"]
        out_name = meta["outputs"][0]["name"]
        for binary in (True, False):
            result = infer(server, x, binary=binary)
            ok, error = outputs_match({"y": result.as_numpy(out_name)}, {"y": expected(onnx_path, x)})
            assert ok, error
        inp = triton.InferInput("input", [3, 3, 16, 16], "FP32")
        inp.set_data_from_numpy(x)
        whole = c.infer("cnn", [inp], request_id="req-7")  # no outputs named: all, binary
        assert whole.get_response()["id"] == "req-7" and whole.get_response()["model_version"] == "1"
        assert outputs_match({"y": whole.as_numpy(out_name)}, {"y": expected(onnx_path, x)})[0]
        assert c.get_model_repository_index() == [{"name": "cnn", "version": "1", "state": "READY", "reason": ""}]


def test_plain_json_request_and_gzip_body(built):
    onnx_path, artifact = built
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    body = {"id": "a", "inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32",
                                   "data": x.tolist()}]}  # nested lists are accepted too
    with running([artifact]) as server:
        status, headers, raw = request(server, "/v2/models/cnn/versions/1/infer", body)
        assert status == 200 and headers["Content-Type"] == "application/json"
        reply = json.loads(raw)
        assert reply["id"] == "a" and reply["model_name"] == "cnn"
        out = reply["outputs"][0]
        got = np.array(out["data"], np.float32).reshape(out["shape"])
        assert outputs_match({"y": got}, {"y": expected(onnx_path, x)})[0]
        status, _, raw = request(server, "/v2/models/cnn/infer", gzip.compress(json.dumps(body).encode()),
                                 {"Content-Encoding": "gzip"})
        assert status == 200, raw


@pytest.mark.parametrize("body, headers, status, message", [
    (b"{not json", {}, 400, "not valid JSON"),
    ({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]}, {}, 400,
     "has shape 1x3x8x8, expected Nx3x16x16"),
    ({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "INT32", "data": [0] * 768}]}, {}, 400,
     "has dtype int32, expected float32"),
    ({"inputs": [{"name": "other", "shape": [1], "datatype": "FP32", "data": [0.0]}]}, {}, 400,
     "missing ['input'], unknown ['other']"),
    ({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 5}]}, {}, 400,
     "5 values for shape"),
    ({"inputs": []}, {}, 400, "no 'inputs'"),
    ({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "BYTES", "data": ["a"]}]}, {}, 400,
     "datatype BYTES is not supported"),
], ids=["malformed-json", "wrong-shape", "wrong-dtype", "missing-input", "too-few-values", "no-inputs", "bytes"])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(built, body, headers, status, message):
    _, artifact = built
    with running([artifact]) as server:
        got, _, raw = request(server, "/v2/models/cnn/infer", body, headers)
        assert got == status, raw
        assert message in json.loads(raw)["error"]
        assert str(artifact.parent) not in raw.decode()  # no file paths in errors
        assert first_output(infer(server, np.zeros((1, 3, 16, 16), np.float32))).shape == (1, 4)


def test_truncated_binary_payload_unknown_model_and_version_oversized_body(built):
    _, artifact = built
    x = np.zeros((1, 3, 16, 16), np.float32)
    header = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    with running([artifact], max_body_mb=0.01) as server:
        status, _, raw = request(server, "/v2/models/cnn/infer", header + x.tobytes()[:100],
                                 {"Inference-Header-Content-Length": str(len(header))})
        assert status == 400 and "binary data is truncated" in json.loads(raw)["error"]
        status, _, raw = request(server, "/v2/models/nope/infer", {"inputs": []})
        assert status == 404 and "unknown model 'nope' (served: cnn)" in json.loads(raw)["error"]
        status, _, raw = request(server, "/v2/models/cnn/versions/9/infer", {"inputs": []})
        assert status == 404 and "has no version '9'" in json.loads(raw)["error"]
        status, _, raw = request(server, "/v2/models/cnn/infer", b"x" * 20_000)
        assert status == 413 and "exceeds the limit of 10000 bytes" in json.loads(raw)["error"]
        status, _, raw = request(server, "/v2/models/cnn/infer", header + x.tobytes(),
                                 {"Inference-Header-Content-Length": str(len(header))})
        assert status == 200, raw


def _repository(folder: Path, artifact: Path, versions) -> Path:
    for version in versions:
        (folder / "cnn" / str(version)).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifact, folder / "cnn" / str(version) / "model.so")
    return folder


def test_versions_hot_reload_and_a_broken_artifact(built, tmp_path):
    onnx_path, artifact = built
    repo = _repository(tmp_path / "repo", artifact, [1, 2])
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with running([repo], poll_s=0.2) as server:
        c = client(server)
        assert c.get_model_metadata("cnn")["versions"] == ["2", "1"]
        assert infer(server, x).get_response()["model_version"] == "2"  # the newest by default
        assert infer(server, x, version="1").get_response()["model_version"] == "1"
        _repository(repo, artifact, [10])
        broken = repo / "cnn" / "11" / "model.so"
        broken.parent.mkdir()
        blob = bytearray(artifact.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        broken.write_bytes(bytes(blob))
        deadline = time.monotonic() + 30
        while {r["version"] for r in c.get_model_repository_index()} != {"1", "2", "10", "11"}:
            assert time.monotonic() < deadline, "the new versions were not picked up"
            time.sleep(0.1)
        index = {r["version"]: r for r in c.get_model_repository_index()}
        assert index["10"]["state"] == "READY"
        assert index["11"]["state"] == "UNAVAILABLE" and "does not match the sha256" in index["11"]["reason"]
        assert str(repo) not in index["11"]["reason"]
        result = infer(server, x)
        assert result.get_response()["model_version"] == "10"
        assert outputs_match({"y": first_output(result)}, {"y": expected(onnx_path, x)})[0]
        with pytest.raises(InferenceServerException, match="version 11 is not ready"):
            infer(server, x, version="11")
        c.unload_model("cnn")
        assert request(server, "/v2/models/cnn/ready")[0] == 404
        c.load_model("cnn")
        assert c.is_model_ready("cnn") and infer(server, x).get_response()["model_version"] == "10"
        with pytest.raises(InferenceServerException, match="no model named 'nope'"):
            c.load_model("nope")


def _concurrent(server, arrays, model="cnn"):
    """Infer every array at once from a thread pool; returns each result or the exception it raised."""
    def one(x):
        try:
            return infer(server, x, model)
        except InferenceServerException as err:
            return err

    with concurrent.futures.ThreadPoolExecutor(len(arrays)) as pool:
        return list(pool.map(one, arrays))


def test_dynamic_batching_gives_each_request_its_own_rows(built):
    onnx_path, artifact = built
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((1 + i % 2, 3, 16, 16)).astype(np.float32) for i in range(8)]
    with running([artifact], max_batch=8, batch_timeout_ms=200) as server:
        results = _concurrent(server, arrays)
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
        results = _concurrent(server, [x] * 24, model="heavy")
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


def test_bearer_token(built):
    _, artifact = built
    with running([artifact], token="s3cret") as server:
        assert request(server, "/v2/health/live")[0] == 200  # probes need no token
        status, headers, raw = request(server, "/v2/models/cnn")
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
        assert request(server, "/v2/models/cnn", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(server, "/v2/models/cnn", headers={"Authorization": "Bearer s3cret"})[0] == 200


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
    # about 15 ms a run here: 16 requests keep the server busy for a quarter of a second
    heavy = compiler.compile(save(resnet((2, 2), width=64, size=224, classes=4, batch=1), tmp_path, "heavy"),
                             target="auto", output=tmp_path / "heavy.so")
    process = subprocess.Popen([sys.executable, "-m", "compiler.cli", "serve", str(heavy.path), "--port", "0"],
                               cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "serving" not in line:
            line = process.stderr.readline()
            assert line, "the server exited early"
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        maps = Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtvm_runtime.so" in maps and "libtvm_compiler.so" not in maps  # serving needs TVM's runtime only

        class Probe:
            pass

        probe = Probe()
        probe.port = port
        x = np.zeros((1, 3, 224, 224), np.float32)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(infer, probe, x, "heavy") for _ in range(16)]
            time.sleep(0.1)
            process.send_signal(signal.SIGTERM)
            results = [f.result(timeout=60) for f in futures]
        assert all(first_output(r).shape == (1, 4) for r in results)  # every request in flight was answered
        assert process.wait(60) == 0
        said = process.stderr.read()
        in_flight = int(said.split("shutting down: ")[1].split()[0])
        assert in_flight > 0, said
    finally:
        if process.poll() is None:
            process.kill()


def test_serve_cli_errors_are_one_line():
    done = subprocess.run([sys.executable, "-m", "compiler.cli", "serve", "/no/such/models"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: model source(s) not found: /no/such/models (pass artifacts (.so) or a "
                                   "repository folder of NAME/VERSION/model.so)")


def test_chunked_body_over_the_limit_gets_413(built):
    import http.client  # noqa: PLC0415

    _, artifact = built
    with running([artifact], max_body_mb=0.01) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v2/models/cnn/infer", body=(b"x" * 4000 for _ in range(10)), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        response = conn.getresponse()
        assert response.status == 413
        assert "exceeds the limit of 10000 bytes" in json.loads(response.read())["error"]
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
