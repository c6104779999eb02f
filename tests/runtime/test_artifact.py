"""Artifacts and their manifests: the fields, and every artifact runtime.load refuses (tampered, truncated,
another architecture, missing CPU features, a newer format, a manifest that does not match), and a rebuilt one."""

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest

import compiler
import runtime
from runtime.artifact import read_weights, split_artifact, write_artifact
from runtime.errors import KilnError
from tests.models import assert_matches_onnxruntime, save


def test_manifest_fields(artifact):
    m = runtime.read_manifest(artifact)
    assert m.inputs[0].name == "x" and m.inputs[0].shape == ["batch", 3, 8, 8] and m.inputs[0].dtype == "float32"
    assert m.outputs[0].name == "y" and m.outputs[0].shape == ["batch", 48, 8, 8]
    assert m.source_model == "model.onnx" and len(m.source_sha256) == 64 and len(m.library_sha256) == 64
    assert m.target and m.tvm_target["kind"] == "llvm" and m.arch == "x86_64"
    assert "kiln.FoldBatchNorm" in m.passes and m.tvm_version.startswith("0.27")
    assert set(m.tuning) == {"database", "records", "tasks_tuned", "tasks_default"}
    assert m.format_version == 3 and m.quantization is None


def _rewrite(artifact, tmp_path, edit_library=None, edit_manifest=None) -> Path:
    library, manifest = split_artifact(artifact)
    library = bytearray(library)
    if edit_library:
        edit_library(library)
    if edit_manifest:
        edit_manifest(manifest)
    (tmp_path / "lib.so").write_bytes(bytes(library))
    return write_artifact(tmp_path / "lib.so", manifest, tmp_path / "edited.so", read_weights(artifact))


def test_tampered_library_is_refused(artifact, tmp_path):
    blob = bytearray(artifact.read_bytes())
    blob[runtime.read_manifest(artifact).weights["offset"] // 3] ^= 0xFF  # inside the library part
    bad = tmp_path / "tampered.so"
    bad.write_bytes(bytes(blob))
    with pytest.raises(KilnError, match="does not match the sha256"):
        runtime.load(bad)


def test_other_architecture_is_refused(artifact, tmp_path):
    other = _rewrite(artifact, tmp_path, edit_library=lambda lib: struct.pack_into("<H", lib, 18, 0xB7))
    with pytest.raises(KilnError, match=r"built for aarch64 \(target .*\), this host is x86_64"):
        runtime.load(other)


def test_missing_cpu_features_are_refused(artifact, tmp_path):
    other = _rewrite(artifact, tmp_path, edit_manifest=lambda m: m.cpu_features.append("avx_from_the_future"))
    with pytest.raises(KilnError, match="needs CPU features this machine lacks: avx_from_the_future"):
        runtime.load(other)


def test_not_an_artifact(tmp_path):
    plain = tmp_path / "plain.so"
    plain.write_bytes(b"\x7fELF" + b"\0" * 100)
    with pytest.raises(KilnError, match="is not a Kiln artifact"):
        runtime.load(plain)


def test_truncated_artifact_is_refused(artifact, tmp_path):
    cut = tmp_path / "cut.so"
    cut.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
    with pytest.raises(KilnError, match="is not a Kiln artifact"):
        runtime.load(cut)


def test_newer_format_version_is_refused(artifact, tmp_path):
    newer = _rewrite(artifact, tmp_path, edit_manifest=lambda m: setattr(m, "format_version", 99))
    with pytest.raises(KilnError, match="has artifact format 99; this Kiln runtime reads format 3 and older"):
        runtime.load(newer)


def test_manifest_that_does_not_match_the_library_is_refused(artifact, tmp_path):
    def add_input(manifest):
        manifest.inputs.append(runtime.artifact.TensorSpec("extra", "float32", [1]))

    edited = _rewrite(artifact, tmp_path, edit_manifest=add_input)
    with pytest.raises(KilnError, match=r"the manifest lists 2 input\(s\) and 1 weight\(s\) but the library's "
                                        r"main takes 2"):
        runtime.load(edited)


def test_a_model_rebuilt_in_place_loads_its_new_code(tmp_path):
    """dlopen() returns the library it already has for a path: reloading a rebuilt artifact must not."""
    from tests.models import single_op_model

    out = tmp_path / "same.so"
    for scale in (2.0, 3.0):
        weights = {"s": np.array([scale], np.float32)}
        path = save(single_op_model("Mul", {"x": [4]}, [4], weights), tmp_path, f"mul{scale}")
        compiler.compile(path, output=out, tuning_log="none")
        result = runtime.load(out).run({"x": np.ones(4, np.float32)})
        np.testing.assert_allclose(next(iter(result.values())), np.full(4, scale))


def test_a_planted_copy_is_never_loaded_and_no_copy_stays(tmp_path, monkeypatch):
    """The library is loaded from a copy made for that load alone in a private folder: a file planted where an
    earlier runtime put its copies (a name predictable from the manifest) is ignored, and nothing is left."""
    import tempfile

    from tests.models import single_op_model

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "same.so"
    seen = []
    load_module = runtime.tvm_runtime.load_module

    def watching(path, *args):
        seen.append((path, os.stat(os.path.dirname(path)).st_mode & 0o777, os.stat(path).st_mode & 0o777))
        return load_module(path, *args)

    monkeypatch.setattr(runtime.model.tvmrt, "load_module", watching)
    for scale in (2.0, 5.0):
        weights = {"s": np.array([scale], np.float32)}
        compiler.compile(save(single_op_model("Mul", {"x": [4]}, [4], weights), tmp_path, f"mul{scale}"),
                         output=out, tuning_log="none")
        planted = scratch / f"kiln-{runtime.read_manifest(out).library_sha256[:16]}-{out.name}"
        planted.write_bytes(b"\x7fELF planted")
        seen.clear()
        result = runtime.load(out).run({"x": np.ones(4, np.float32)})
        np.testing.assert_allclose(next(iter(result.values())), np.full(4, scale))
        [(loaded, folder_mode, file_mode)] = seen
        assert Path(loaded).parent.parent == scratch and (folder_mode, file_mode) == (0o700, 0o600)
        assert sorted(p.name for p in scratch.iterdir()) == [planted.name]  # the copy went with its folder
        planted.unlink()


def test_a_library_the_loader_refuses_is_named_by_the_artifact_path(artifact, tmp_path):
    """A library whose hash matches but that the dynamic loader cannot map: the error names the artifact, not the
    private copy it was loaded from."""
    def zero_all_but_the_elf_header(library):
        library[64:] = bytes(len(library) - 64)  # the program headers read as PT_NULL: no loadable segment

    broken = _rewrite(artifact, tmp_path, edit_library=zero_all_but_the_elf_header)
    with pytest.raises(KilnError, match="the library could not be loaded") as caught:
        runtime.load(broken)
    assert str(broken) in str(caught.value) and "kiln-load-" not in str(caught.value)


@pytest.mark.parametrize("edit", [(b'"name": "x"', b'"name": "z"'), (b'"batch",\n        3', b'"batch",\n        4')],
                         ids=["renamed-input", "other-shape"])
def test_a_manifest_edited_in_place_is_refused(artifact, tmp_path, edit):
    """Edits that keep the input count (and the manifest's length) still break the seal."""
    blob = artifact.read_bytes()
    assert blob.count(edit[0]) >= 1
    edited = tmp_path / "edited.so"
    edited.write_bytes(blob.replace(edit[0], edit[1], 1))
    assert runtime.read_manifest(edited) != runtime.read_manifest(artifact)
    with pytest.raises(KilnError, match=r"the manifest does not match the seal written with it \(edited after"):
        runtime.load(edited)


def test_an_unsealed_format_1_artifact_is_refused(artifact, tmp_path):
    library, manifest = split_artifact(artifact)
    manifest.format_version, manifest.weights = 1, {}  # format 1 kept every weight in the library
    meta = manifest.to_json().encode()
    old = tmp_path / "old.so"
    old.write_bytes(library + meta + struct.pack("<Q8s", len(meta), b"KILNMF01"))
    assert runtime.read_manifest(old).format_version == 1  # inspect still reads it
    with pytest.raises(KilnError, match="has artifact format 1, whose manifest is not sealed to its library"):
        runtime.load(old)


def _mapped_ranges(name_part: str) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of files whose path contains NAME_PART."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and name_part in fields[5]:
            low, high = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((low, high))
    return ranges


def test_weights_are_used_where_they_are_mapped_not_copied(artifact):
    """The weights main takes after the inputs lie in the mapped weights file, a memory file (one copy in memory,
    no file on disk); the library holds none of them, and the results stay right."""
    model = runtime.load(artifact, threads=1)
    spec = runtime.read_manifest(artifact).weights
    assert len(spec["tensors"]) == 1 and spec["offset"] % runtime.artifact.WEIGHTS_ALIGNMENT == 0
    mapped = _mapped_ranges("kiln-weights")  # the memory file (memfd) the load copied them into
    assert mapped, "the weights file is not mapped"
    for tensor in model._weights:
        assert any(low <= tensor.data_ptr() < high for low, high in mapped)
    assert_matches_onnxruntime(artifact.parent / "model.onnx", model)


def test_tampered_weights_are_refused(artifact, tmp_path):
    spec = runtime.read_manifest(artifact).weights
    blob = bytearray(artifact.read_bytes())
    blob[spec["offset"] + spec["bytes"] // 2] ^= 0x01
    bad = tmp_path / "tampered.so"
    bad.write_bytes(bytes(blob))
    with pytest.raises(KilnError, match="the weights do not match the sha256 recorded in its manifest"):
        runtime.load(bad)


@pytest.mark.parametrize("damage", [
    lambda w: w.update(offset=w["offset"] + 64),
    lambda w: w.update(bytes=w["bytes"] * 2),
    lambda w: w["tensors"][0].update(shape=[10 ** 9]),
    lambda w: w["tensors"][0].update(offset=-64),
    lambda w: w["tensors"][0].update(dtype="float4_e2m1fn"),
    lambda w: w.update(tensors="all"),
], ids=["offset", "size", "shape", "negative-offset", "sub-byte-dtype", "not-a-list"])
def test_a_weights_entry_that_does_not_fit_the_file_is_one_line(artifact, tmp_path, damage):
    """The entry is read before anything is hashed: an edit (resealed, as a forger would) is named in one line."""
    blob = artifact.read_bytes()
    (length,) = struct.unpack("<Q", blob[-16:-8])
    body = blob[:len(blob) - 48 - length]
    manifest = runtime.read_manifest(artifact)
    damage(manifest.weights)
    text = manifest.to_json().encode()
    seal = hashlib.sha256(body + text).digest()
    (tmp_path / "edited.so").write_bytes(body + text + struct.pack("<32sQ8s", seal, len(text), b"KILNMF02"))
    with pytest.raises(KilnError, match="has a damaged manifest \\(its weights entry does not fit the file\\)"):
        runtime.load(tmp_path / "edited.so")
