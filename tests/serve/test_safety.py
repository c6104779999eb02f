"""Serving safety: a served artifact rewritten under load (cp, truncation, random bytes) never stops the server,
HTTP the parser refuses still gets JSON, and nothing a client sends (aborted uploads, bodies over the limit, gzip
bombs, floods of unknown model names) stays in memory or in /metrics."""

from __future__ import annotations

import gzip
import json
import os
import shutil

import numpy as np
import pytest

import compiler
from benchmarks import serve_soak
from benchmarks.zoo import resnet
from runtime.bench import outputs_match
from tests.fuzz.requests import send
from tests.models import save
from tests.serve.helpers import expected, first_output, infer, repository, request, running, serving_process


def _post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", *headers]
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_http_the_parser_refuses_and_every_refusal_is_json(built):
    _, artifact = built
    good = serve_soak.infer_body()
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
            got, raw = send(port, data)
            body = json.loads(raw)
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


def test_soak_aborted_uploads_gzip_bombs_and_404_floods_hold_no_memory(built):
    """A bounded soak (benchmarks/serve_soak.py, 4 rounds) against a real server process: RSS stays flat,
    /metrics stays small, every refusal is the right 4xx."""
    _, artifact = built
    with serving_process([artifact], "--max-body-mb", str(serve_soak.LIMIT_MB)) as (process, address):
        result = serve_soak.soak(address.port, process.pid, rounds=4, progress=lambda _line: None)
        assert first_output(infer(address, np.zeros((1, 3, 16, 16), np.float32))).shape == (1, 4)
        assert process.poll() is None
    assert result["statuses"] == {"aborted": ['"hung up"'], "chunked_over_limit": ["413"], "gzip_bomb": ["413"],
                                  "gzip_bomb_json": ["true"], "unknown_models": ["[404]"]}
    # Each round: 30 MB aborted + 40 MB refused + 40 MB inflated: a leak of any of them grows RSS by 30 MB or more
    # in every round. RSS may step up once, in any round, by about one such buffer and stay there (fresh-clone runs
    # saw 62.5, 100.7, 100.8, 100.8 MB and 62.4, 62.4, 62.6, 86.0 MB): glibc raises its mmap threshold (up to 32
    # MB) to the size of a freed mapped block, so the next 30 MB buffer comes from the heap, which it keeps. So: at
    # most one round may grow by over 10 MB, and the whole growth stays under 60 MB.
    rss = result["rss_mb"]
    steps = [later - earlier for earlier, later in zip(rss, rss[1:])]
    assert sum(step > 10 for step in steps) <= 1 and result["growth_after_first_round_mb"] < 60, rss
    assert result["metrics_bytes"] < 20_000 and result["live"]


def test_rewriting_a_served_artifact_never_stops_the_server(built, tmp_path):
    """cp of another artifact over the served file, truncation, random bytes, cp of the original back, while
    requests run (benchmarks/serve_soak.py, 2 cycles): the server lives, answers 200 or 503, serves again."""
    onnx_path, artifact = built
    other = compiler.compile(save(resnet((1,), width=12, size=16, classes=4, batch="N"), tmp_path, "other"),
                             target="auto", output=tmp_path / "other.so").path
    repo = repository(tmp_path / "repo", artifact, [1])
    with serving_process([repo], "--poll-s", "0.1") as (process, address):
        result = serve_soak.rewrite_under_load(address.port, process.pid, repo / "cnn" / "1" / "model.so", artifact,
                                               other, cycles=2, progress=lambda _line: None)
        assert process.poll() is None, f"the server died ({process.returncode})"
        x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
        assert outputs_match({"y": first_output(infer(address, x))}, {"y": expected(onnx_path, x)})[0]
    assert result["alive"] and result["recovered_cycles"] == 2
    assert set(result["answers"]) <= {200, 503} and result["answers"][200] > 10, result["answers"]


@pytest.mark.parametrize("rewrite", ["copy", "truncate"])
def test_a_rewrite_during_the_copy_fails_the_check(built, tmp_path, rewrite, monkeypatch):
    """The loader copies and hashes in one pass: bytes changed under it are refused, never loaded."""
    import runtime.artifact as artifact_module  # noqa: PLC0415

    _, artifact = built
    target = tmp_path / "model.so"
    shutil.copyfile(artifact, target)
    hash_part = artifact_module._hash_part
    parts = []

    def rewritten_midway(f, size, digests, copy_to=None):
        if not parts:  # the library part, the first one hashed
            if rewrite == "copy":
                with open(target, "r+b") as out:
                    out.seek(size // 2)
                    out.write(b"\xff" * 4096)
            else:
                os.truncate(target, size // 2)
        parts.append(size)
        return hash_part(f, size, digests, copy_to)

    monkeypatch.setattr(artifact_module, "_hash_part", rewritten_midway)
    import runtime  # noqa: PLC0415
    from runtime.errors import KilnError  # noqa: PLC0415

    with pytest.raises(KilnError, match="does not match the sha256"):
        runtime.load(target)


def test_a_token_id_past_the_vocabulary_is_a_400_naming_the_input(tmp_path):
    # a served BERT once segfaulted on such an id; the kernels clamp indices, and the server refuses the request
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    from tests.models import finish  # noqa: PLC0415

    table = numpy_helper.from_array(np.random.default_rng(2).standard_normal((30, 4)).astype(np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "embed",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])], [table])
    artifact = compiler.compile(save(finish(graph), tmp_path, "embed"), output=tmp_path / "embed.so").path
    body = {"inputs": [{"name": "ids", "shape": [1, 5], "datatype": "INT64", "data": [1, 2, 30, 4, 5]}]}
    with running([artifact]) as server:
        status, _, answer = request(server, "/v2/models/embed/infer", body)
        assert status == 400
        assert "input 'ids' holds 30 at [0, 2], outside [-30, 29]" in json.loads(answer)["error"]
        body["inputs"][0]["data"][2] = -30
        status, _, answer = request(server, "/v2/models/embed/infer", body)
        assert status == 200, answer
        assert np.allclose(json.loads(answer)["outputs"][0]["data"][8:12],
                           numpy_helper.to_array(table)[-30].tolist())
