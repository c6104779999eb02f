"""Serving safety: a served artifact rewritten under load (cp, truncation, random bytes) never stops the server,
HTTP the parser refuses still gets JSON, and nothing a client sends (aborted uploads, bodies over the limit, gzip
bombs, floods of unknown model names) stays in memory or in /metrics."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import threading
import time
import zlib

import numpy as np
import pytest

import compiler
from benchmarks.zoo import resnet
from runtime.bench import outputs_match
from tests.models import save
from tests.serve.helpers import (expected, first_output, infer, repository, request, rss_mb, running,
                                 serving_process)


def _raw(port: int, data: bytes, read: bool = True) -> tuple[int, dict]:
    """(status, JSON body) of the answer to the raw bytes DATA (sent as they are: no client fixes them up)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        answer = b""
        while read:
            piece = sock.recv(1 << 16)
            if not piece:
                break
            answer += piece
            head, _, rest = answer.partition(b"\r\n\r\n")
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(
                b"content-length:")]
            if length and len(rest) >= length[0]:
                break
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest)


def _post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _infer_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def test_http_the_parser_refuses_and_every_refusal_is_json(built):
    _, artifact = built
    x = np.zeros((1, 3, 16, 16), np.float32)
    good = _infer_body(x)
    bomb = gzip.compress(b" " * 30_000_000)  # 30 KB that inflate to 30 MB
    with running([artifact], max_body_mb=1) as server:
        port, infer_path = server.port, "/v2/models/cnn/infer"
        cases = [
            (_post(infer_path, good[:-3] + b"}}}", "Content-Encoding: gzip"), 400, "gzip body is damaged"),
            (_post(infer_path, gzip.compress(good)[:-20], "Content-Encoding: gzip"), 400, "gzip body is truncated"),
            (_post(infer_path, bomb, "Content-Encoding: gzip"), 413, "exceeds the limit of 1000000 bytes (--max-body"),
            (_post(infer_path, good, "Content-Encoding: br"), 415, "Content-Encoding 'br' is not supported"),
            (_post(infer_path, good, "Content-Length: 12abc"), 400, "Content-Length '12abc' is not a whole number"),
            (_post("/v2/repository/index", b"{}", "Content-Length: twelve"), 400, "malformed HTTP request"),
            (_post(infer_path, b"zz\r\n", "Transfer-Encoding: chunked"), 400, "malformed HTTP request"),
            (b"GET /v2/models/cnn/infer HTTP/1.1\r\nHost: x\r\n\r\n", 405,
             "GET is not allowed on /v2/models/cnn/infer (use POST)"),
            (f"GET /v2/models/{'a' * 100_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), 414, "the URL is 100"),
            (f"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 70_000}\r\n\r\n".encode(), 431, "request headers are"),
        ]
        for data, status, message in cases:
            got, body = _raw(port, data)
            assert (got, message in body["error"]) == (status, True), (data[:80], got, body)
            assert len(body["error"]) < 400  # client-chosen text is cut, not echoed whole
        status, _, raw = request(server, infer_path, gzip.compress(good), {"Content-Encoding": "gzip"})
        assert status == 200, raw
        two_members = gzip.compress(good[:100]) + gzip.compress(good[100:])  # gzip allows members back to back
        status, _, raw = request(server, infer_path, two_members, {"Content-Encoding": "gzip"})
        assert status == 200, raw


def test_unknown_models_share_one_metrics_label(built):
    _, artifact = built
    with running([artifact]) as server:
        for i in range(50):
            status, _, raw = request(server, f"/v2/models/{'m' * 2000}{i}/infer", b"{}")
            assert status == 404 and len(json.loads(raw)["error"]) < 300
            assert request(server, f"/v2/models/cnn/versions/{i}{'v' * 1000}/infer", b"{}")[0] == 404
        text = request(server, "/metrics")[2].decode()
        assert len(text) < 20_000
        assert 'kiln_requests_total{model="(unknown)",status="404",version="(unknown)"} 50.0' in text
        assert 'kiln_requests_total{model="cnn",status="404",version="(unknown)"} 50.0' in text


def _abort_upload(port: int, size: int) -> None:
    """Send the headers and all but the last byte of a SIZE-byte body, then hang up."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_post("/v2/models/cnn/infer", b"", f"Content-Length: {size}"))
        piece = b" " * (1 << 20)
        for _ in range(size // len(piece)):
            sock.sendall(piece)
        time.sleep(0.05)


def _chunked_over_limit(port: int, size: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(_post("/v2/models/cnn/infer", b"", "Transfer-Encoding: chunked"))
        piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
        try:
            for _ in range(size >> 20):
                sock.sendall(piece)
        except OSError:  # the server answered 413 and closed: the rest is refused
            pass
        return int(sock.recv(1 << 16).split()[1])


def test_soak_aborted_uploads_gzip_bombs_and_404_floods_hold_no_memory(built):
    """A bounded soak against a real server process: RSS stays flat, /metrics stays small."""
    _, artifact = built
    inflating = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = inflating.compress(b"\0" * (1 << 30)) + inflating.flush()  # 1 MB that inflate to 1 GB
    with serving_process([artifact], "--max-body-mb", "40") as (process, address):
        x = np.zeros((1, 3, 16, 16), np.float32)

        def one_round():
            _abort_upload(address.port, 30_000_000)
            assert _chunked_over_limit(address.port, 48 << 20) == 413
            status, _, raw = request(address, "/v2/models/cnn/infer", bomb, {"Content-Encoding": "gzip"})
            assert status == 413 and "once inflated" in json.loads(raw)["error"], raw
            for i in range(100):
                assert request(address, f"/v2/models/{'n' * 4000}{i}/infer", b"{}")[0] == 404

        one_round()  # the first round may grow the heap to what a request at the limit needs
        time.sleep(0.3)
        before = rss_mb(process.pid)
        for _ in range(5):
            one_round()
        time.sleep(0.3)
        after = rss_mb(process.pid)
        assert first_output(infer(address, x)).shape == (1, 4)
        metrics = request(address, "/metrics")[2]
        assert process.poll() is None
    # 5 rounds of 30 MB aborted + 40 MB refused + 40 MB inflated: a leak of any of them is > 150 MB
    assert after - before < 40, (before, after)
    assert len(metrics) < 20_000, len(metrics)


def test_rewriting_a_served_artifact_never_stops_the_server(built, tmp_path):
    onnx_path, artifact = built
    other_onnx = save(resnet((1,), width=12, size=16, classes=4, batch="N"), tmp_path, "other")
    other = compiler.compile(other_onnx, target="auto", output=tmp_path / "other.so").path
    repo = repository(tmp_path / "repo", artifact, [1])
    served = repo / "cnn" / "1" / "model.so"
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    answers, stop = [], threading.Event()
    with serving_process([repo], "--poll-s", "0.1") as (process, address):
        def hammer():
            while not stop.is_set():
                status, _, raw = request(address, "/v2/models/cnn/infer", _infer_body(x))
                answers.append(status)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        rng = np.random.default_rng(6)
        rewrites = [lambda: shutil.copyfile(other, served),  # cp writes in place: same inode, new bytes
                    lambda: os.truncate(served, served.stat().st_size // 2),
                    lambda: served.write_bytes(rng.bytes(served.stat().st_size)),
                    lambda: shutil.copyfile(artifact, served)]
        try:
            for rewrite in rewrites:
                time.sleep(0.5)
                rewrite()
                assert process.poll() is None, f"the server died ({process.returncode})"
            deadline = time.monotonic() + 30
            while True:  # the last rewrite restored the first artifact: it serves again
                status, _, raw = request(address, "/v2/models/cnn/infer", _infer_body(x))
                if status == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert process.poll() is None, f"the server died ({process.returncode})"
        reply = json.loads(raw)
        got = np.array(reply["outputs"][0]["data"], np.float32).reshape(reply["outputs"][0]["shape"])
        assert outputs_match({"y": got}, {"y": expected(onnx_path, x)})[0]
    assert answers and set(answers) <= {200, 503}, sorted(set(answers))
    assert answers.count(200) > 10


@pytest.mark.parametrize("rewrite", ["copy", "truncate"])
def test_a_rewrite_during_the_copy_fails_the_check(built, tmp_path, rewrite, monkeypatch):
    """The loader copies and hashes in one pass: bytes changed under it are refused, never loaded."""
    import runtime.artifact as artifact_module  # noqa: PLC0415

    _, artifact = built
    target = tmp_path / "model.so"
    shutil.copyfile(artifact, target)
    facts = artifact_module._library_facts

    def rewritten_midway(f, size, copy_to=None):
        if rewrite == "copy":
            with open(target, "r+b") as out:
                out.seek(size // 2)
                out.write(b"\xff" * 4096)
        else:
            os.truncate(target, size // 2)
        return facts(f, size, copy_to)

    monkeypatch.setattr(artifact_module, "_library_facts", rewritten_midway)
    import runtime  # noqa: PLC0415
    from runtime.errors import KilnError  # noqa: PLC0415

    with pytest.raises(KilnError, match="does not match the sha256"):
        runtime.load(target)
