"""Model repositories: versions side by side, hot reload, and a broken artifact that leaves the others serving."""

from __future__ import annotations

import time

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from runtime.bench import outputs_match
from tests.serve.helpers import client, expected, first_output, infer, repository, request, running


def test_versions_hot_reload_and_a_broken_artifact(built, tmp_path):
    onnx_path, artifact = built
    repo = repository(tmp_path / "repo", artifact, [1, 2])
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with running([repo], poll_s=0.2) as server:
        c = client(server)
        assert c.get_model_metadata("cnn")["versions"] == ["2", "1"]
        assert infer(server, x).get_response()["model_version"] == "2"  # the newest by default
        assert infer(server, x, version="1").get_response()["model_version"] == "1"
        repository(repo, artifact, [10])
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
