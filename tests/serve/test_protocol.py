"""The KServe v2 protocol with a real client (tritonclient): metadata, JSON and binary inference against
ONNX Runtime, gzip bodies, every bad request's status and message, body limits, the bearer token."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import tritonclient.http as triton

from runtime.bench import outputs_match
from tests.serve.helpers import client, expected, first_output, infer, request, running


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


def _input(**fields) -> dict:
    return {"inputs": [{"name": "input", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [0.0] * 768,
                        **fields}]}


def _binary(shape, size: int, data: bytes = b"", **item) -> tuple[bytes, dict]:
    header = json.dumps({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}, **item}]}).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


_DEEP = 5000
BAD_REQUESTS = {  # class: (body, headers, status, what the error names)
    "malformed-json": (b"{not json", {}, 400, "not valid JSON"),
    "wrong-shape": (_input(shape=[1, 3, 8, 8], data=[0.0] * 192), {}, 400, "has shape 1x3x8x8, expected Nx3x16x16"),
    "wrong-dtype": (_input(datatype="INT32", data=[0] * 768), {}, 400, "has dtype int32, expected float32"),
    "missing-input": (_input(name="other", shape=[1], data=[0.0]), {}, 400, "missing ['input'], unknown ['other']"),
    "too-few-values": (_input(data=[0.0] * 5), {}, 400, "5 values for shape"),
    "no-inputs": ({"inputs": []}, {}, 400, "no 'inputs'"),
    "bytes": (_input(datatype="BYTES", data=["a"]), {}, 400, "datatype BYTES is not supported"),
    "nested-lists": (b"[" * _DEEP + b"]" * _DEEP, {}, 400, "nests deeper than 32 levels"),
    "nested-inputs": (b'{"inputs": ' + b"[" * _DEEP + b"]" * _DEEP + b"}", {}, 400, "nests deeper than 32"),
    "nested-objects": (b'{"a": ' * _DEEP + b"1" + b"}" * _DEEP, {}, 400, "nests deeper than 32 levels"),
    "nested-data": (_input(data=json.loads("[" * 40 + "]" * 40)), {}, 400, "nests deeper than 32 levels"),
    "count-overflows-int64": (_input(shape=[2 ** 62, 4]), {}, 400, "(18446744073709551616 expected)"),
    "count-overflows-to-zero": (_input(shape=[2 ** 32, 2 ** 32, 3, 1]), {}, 400, "(55340232221128654848 expected)"),
    "dim-2**64": (_input(shape=[2 ** 64]), {}, 400, "shape must be a list of non-negative integers"),
    "dim-10**30": (_input(shape=[10 ** 30, 1]), {}, 400, "shape must be a list of non-negative integers"),
    "dim-negative": (_input(shape=[-1, 3, 16, 16]), {}, 400, "shape must be a list of non-negative integers"),
    "dim-bool": (_input(shape=[True, 3, 16, 16]), {}, 400, "got [true, 3, 16, 16]"),
    "dim-float": (_input(shape=[1.0, 3, 16, 16]), {}, 400, "got [1.0, 3, 16, 16]"),
    "shape-not-a-list": (_input(shape="1x3x16x16"), {}, 400, "'shape' (a list)"),
    "datatype-not-a-string": (_input(datatype=["FP32"]), {}, 400, "'datatype' (a string)"),
    "data-not-numbers": (_input(data=[{"a": 1}] * 768), {}, 400, "data does not convert to FP32"),
    "data-out-of-range": (_input(datatype="INT8", data=[1000] * 768), {}, 400, "data does not convert to INT8"),
    "parameters-not-an-object": (_input(parameters=[1]), {}, 400, "'parameters' must be a JSON object"),
    "output-parameters-not-an-object": ({**_input(), "outputs": [{"name": "y", "parameters": "binary"}]}, {}, 400,
                                        "output 'y': 'parameters' must be a JSON object"),
    "id-not-a-string": ({**_input(), "id": {"a": 1}}, {}, 400, "'id' must be a string"),
    "binary-overflows-to-zero": (*_binary([2 ** 32, 2 ** 32], 0), 400, "holds 18446744073709551616 elements"),
    "binary-size-mismatch": (*_binary([1, 3, 16, 16], 3072, bytes(3071)), 400, "binary data is truncated"),
    "binary-extra-bytes": (*_binary([1, 3, 16, 16], 3072, bytes(3080)), 400, "8 bytes of binary data follow"),
    "binary-size-bool": (*_binary([1, 3, 16, 16], True, bytes(1)), 400, "binary data is truncated"),
    "binary-wrong-count": (*_binary([1, 3, 16, 15], 2880, bytes(2880)), 400, "has shape 1x3x16x15"),
    "header-length-not-a-number": (b"{}", {"Inference-Header-Content-Length": "x"}, 400, "is not an integer"),
    "header-length-too-long": (b"{}", {"Inference-Header-Content-Length": "99"}, 400, "does not fit a body"),
}


@pytest.fixture(scope="module")
def served(built):
    with running([built[1]]) as server:
        yield server


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(served, built, case):
    body, headers, status, message = BAD_REQUESTS[case]
    got, _, raw = request(served, "/v2/models/cnn/infer", body, headers)
    assert got == status, raw
    assert message in json.loads(raw)["error"], raw
    assert str(built[1].parent) not in raw.decode()  # no file paths in errors
    assert request(served, "/v2/health/live")[0] == 200


def test_the_server_serves_after_every_bad_request(served):
    assert first_output(infer(served, np.zeros((1, 3, 16, 16), np.float32))).shape == (1, 4)


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


def test_bearer_token(built):
    _, artifact = built
    with running([artifact], token="s3cret") as server:
        assert request(server, "/v2/health/live")[0] == 200  # probes need no token
        status, headers, raw = request(server, "/v2/models/cnn")
        assert status == 401 and headers.get("WWW-Authenticate") == "Bearer"
        assert request(server, "/v2/models/cnn", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(server, "/v2/models/cnn", headers={"Authorization": "Bearer s3cret"})[0] == 200
