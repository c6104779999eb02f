"""Cross targets: aarch64 artifacts built here and run under qemu, CUDA artifacts with checked device code, and the
C++ runner `kiln-run` that drives an artifact without Python."""

from __future__ import annotations

import json
import platform
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from benchmarks.zoo import bert_encoder, mobilenet_v2, resnet
from compiler.build import cuda
from compiler.build.bundle import bundle
from compiler.references import onnxruntime_session
from compiler.targets import all_targets, get_target
from runtime.artifact import split_artifact
from runtime.bench import outputs_match, random_inputs
from runtime.errors import KilnError
from tests.models import finish, kiln, save

ARM_PRESETS = sorted(t.name for t in all_targets().values() if t.arch == "aarch64" and t.device == "cpu")
CUDA_PRESETS = sorted(t.name for t in all_targets().values() if t.device == "cuda")
QEMU = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")  # Debian's libc / libstdc++ for aarch64 (g++-aarch64-linux-gnu)
needs_cross_gcc = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None,
                                     reason="aarch64-linux-gnu-g++ missing: `make setup` installs "
                                            "g++-aarch64-linux-gnu with apt-get (needs root)")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-aarch64-static missing: `make setup` installs "
                                                     "qemu-user-static with apt-get (needs root)")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None,
                                reason="nvcc missing: CUDA compilation needs the CUDA toolkit on PATH")


def _elf_machine(library: bytes) -> int:
    assert library[:4] == b"\x7fELF"
    return struct.unpack_from("<H", library, 18)[0]


def test_every_preset_the_design_names_exists():
    presets = all_targets()
    for name in ("host", "x86-avx2", "x86-avx512", "aarch64", "rpi4", "rpi5", "neoverse-n1", "cuda-sm75",
                 "cuda-sm80", "cuda-sm86", "cuda-sm89", "cuda-sm90", "jetson-orin"):
        assert name in presets, name
    assert presets["rpi5"].tvm_target["mcpu"] == "cortex-a76" and "+dotprod" in presets["rpi5"].tvm_target["mattr"]
    assert presets["jetson-orin"].tvm_target["arch"] == "sm_87"
    assert presets["jetson-orin"].tvm_target["host"]["mtriple"].startswith("aarch64")
    for preset in presets.values():
        preset.tvm()  # TVM accepts every target dict


def test_cross_targets_never_run_here_and_auto_stays_on_the_cpu():
    for name in ARM_PRESETS + CUDA_PRESETS:
        assert not get_target(name).runs_here()
    assert get_target("auto").device == "cpu"


def test_missing_cross_compiler_names_the_package(tmp_path, monkeypatch):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    with pytest.raises(KilnError, match=r"links with aarch64-linux-gnu-g\+\+, which is not installed .*"
                                        r"apt-get install g\+\+-aarch64-linux-gnu"):
        compiler.compile(path, target="rpi4", output=tmp_path / "m.so")


@needs_cross_gcc
@pytest.mark.parametrize("target", ARM_PRESETS)
def test_arm_presets_build_aarch64_libraries(target, tmp_path):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    artifact = compiler.compile(path, target=target, output=tmp_path / "m.so", dump_dir=tmp_path / "dump",
                                dump_kinds=("asm",))
    library, manifest = split_artifact(artifact.path)
    assert _elf_machine(library) == 0xB7  # EM_AARCH64
    assert (manifest.arch, manifest.device, manifest.target) == ("aarch64", "cpu", target)
    asm = "\n".join(p.read_text() for p in (tmp_path / "dump").rglob("*.s"))
    assert "fmla\tv" in asm or "fmla v" in asm  # NEON fused multiply-add on 128-bit vectors


@needs_cross_gcc
def test_loading_an_arm_artifact_here_names_both_architectures(tmp_path):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    artifact = compiler.compile(path, target="aarch64", output=tmp_path / "m.so")
    with pytest.raises(KilnError, match=rf"built for aarch64 \(target aarch64\), this host is {platform.machine()}"):
        runtime.load(artifact.path)


def _run_bundle(folder: Path, artifact: Path, feeds: dict, emulate: bool) -> dict:
    """Run kiln-run from FOLDER on FEEDS (under qemu when EMULATE) and read back its outputs."""
    inputs = []
    for i, (name, value) in enumerate(feeds.items()):
        inputs += ["-i", str(folder / f"in{i}.npy")]
        np.save(folder / f"in{i}.npy", value)
    out = folder / "out"
    out.mkdir(exist_ok=True)
    prefix = [QEMU, "-L", str(AARCH64_SYSROOT)] if emulate else []
    done = subprocess.run([*prefix, str(folder / "kiln-run"), artifact.name, *inputs, "-o", str(out)],
                          cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


def _onnxruntime(path: Path, feeds: dict) -> dict:
    session = onnxruntime_session(str(path), threads=1)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


@needs_cross_gcc
@needs_qemu
@pytest.mark.parametrize("target, build", [
    ("rpi4", lambda: resnet((1, 1), width=8, size=32, classes=10)),
    ("rpi5", lambda: mobilenet_v2(width_mult=0.25, size=32, classes=10)),
    ("aarch64", lambda: bert_encoder(layers=1, hidden=32, heads=2, ffn=64, seq=8)),
], ids=["rpi4-resnet", "rpi5-mobilenet", "aarch64-transformer"])
def test_arm_artifact_runs_under_qemu_and_matches_onnxruntime(target, build, tmp_path):
    path = save(build(), tmp_path)
    artifact = compiler.compile(path, target=target, output=tmp_path / f"model.{target}.so")
    made = bundle(artifact.path, tmp_path / "bundle")
    assert {p.name for p in made.files} == {artifact.path.name, "libtvm_runtime.so", "libtvm_ffi.so", "kiln-run"}
    for lib in made.files:
        if lib.suffix == ".so" or lib.name == "kiln-run":
            assert _elf_machine(lib.read_bytes()[:64]) == 0xB7, lib.name
    feeds = random_inputs(artifact.manifest.inputs)
    ours = _run_bundle(made.folder, artifact.path, feeds, emulate=True)
    reference = _onnxruntime(path, feeds)
    ok, error = outputs_match({k.replace("/", "_"): v for k, v in reference.items()}, ours, rtol=1e-3, atol=1e-4)
    assert ok, f"the aarch64 artifact under qemu differs from ONNX Runtime: max abs error {error}"


@needs_cross_gcc
@needs_qemu
def test_demo_model_for_rpi4_runs_under_qemu_and_matches_onnxruntime(tmp_path):
    path = save(resnet(), tmp_path, "resnet18")  # the model `make demo` compiles, full size
    artifact = compiler.compile(path, target="rpi4", output=tmp_path / "resnet18.rpi4.so",
                                input_shapes={"input": [1, 3, 224, 224]})
    made = bundle(artifact.path, tmp_path / "pi")
    feeds = random_inputs(artifact.manifest.inputs)
    ours = _run_bundle(made.folder, artifact.path, feeds, emulate=True)
    ok, error = outputs_match(_onnxruntime(path, feeds), ours, rtol=1e-3, atol=1e-3)
    assert ok, f"ResNet-18 for rpi4 under qemu differs from ONNX Runtime: max abs error {error}"


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build kiln-run")
def test_kiln_run_on_this_machine_matches_and_rejects_bad_input(tmp_path):
    path = save(resnet((1,), width=16, size=16, classes=4), tmp_path)
    artifact = compiler.compile(path, target="host", output=tmp_path / "model.so")
    assert artifact.manifest.weights["tensors"], "no weights lifted: kiln-run's mapped weights go untested"
    made = bundle(artifact.path, tmp_path / "bundle")
    feeds = random_inputs(artifact.manifest.inputs)
    ours = _run_bundle(made.folder, artifact.path, feeds, emulate=False)
    ok, error = outputs_match(_onnxruntime(path, feeds), ours, rtol=1e-3, atol=1e-4)
    assert ok, error
    np.save(made.folder / "bad.npy", np.zeros((1, 3, 8, 8), np.float32))
    done = subprocess.run([str(made.folder / "kiln-run"), "model.so", "-i", "bad.npy"], cwd=made.folder,
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "input 'input' in bad.npy has the wrong shape" in done.stderr
    blob = bytearray((made.folder / "model.so").read_bytes())
    blob[artifact.manifest.weights["offset"] // 3] ^= 0xFF  # inside the library part
    (made.folder / "tampered.so").write_bytes(bytes(blob))
    done = subprocess.run([str(made.folder / "kiln-run"), "tampered.so"], cwd=made.folder, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "does not match the sha256 recorded in its manifest" in done.stderr
    blob = bytearray((made.folder / "model.so").read_bytes())
    blob[artifact.manifest.weights["offset"] + 100] ^= 0x01
    (made.folder / "tampered.so").write_bytes(bytes(blob))
    done = subprocess.run([str(made.folder / "kiln-run"), "tampered.so"], cwd=made.folder, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "the weights do not match the sha256 recorded" in done.stderr
    blob = (made.folder / "model.so").read_bytes()
    (made.folder / "renamed.so").write_bytes(blob.replace(b'"name": "input"', b'"name": "inpux"'))  # same length
    done = subprocess.run([str(made.folder / "kiln-run"), "renamed.so"], cwd=made.folder, capture_output=True,
                          text=True)
    assert done.returncode == 1 and "the manifest does not match the seal written with it" in done.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build kiln-run")
def test_kiln_run_refuses_a_token_id_past_the_vocabulary(tmp_path):
    # an embedding lookup: ids from -50 to 49 are valid (ONNX counts negatives from the end), 50 is refused in
    # one line as the Python runtime refuses it, instead of being clamped into the table
    table = numpy_helper.from_array(np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32), "table")
    graph = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["y"])], "embed",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 4])], [table])
    path = save(finish(graph), tmp_path)
    artifact = compiler.compile(path, target="host", output=tmp_path / "model.so")
    assert artifact.manifest.inputs[0].valid_range == [-50, 49]
    made = bundle(artifact.path, tmp_path / "bundle")
    feeds = {"ids": np.array([[0, 49, -50, -1, 7, 3]], np.int64)}
    ours = _run_bundle(made.folder, artifact.path, feeds, emulate=False)
    ok, error = outputs_match(_onnxruntime(path, feeds), ours, rtol=1e-5, atol=1e-6)
    assert ok, error
    np.save(made.folder / "far.npy", np.array([[0, 1, 2, 50, 4, 5]], np.int64))
    done = subprocess.run([str(made.folder / "kiln-run"), "model.so", "-i", "far.npy"], cwd=made.folder,
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert "input 'ids' in far.npy holds 50 at flat index 3, outside [-50, 49]" in done.stderr
    with pytest.raises(KilnError, match=r"input 'ids' holds 50 at \[0, 3\], outside \[-50, 49\]"):
        runtime.load(artifact.path).run({"ids": np.load(made.folder / "far.npy")})


def test_bundle_refuses_cuda_artifacts_clearly(tmp_path):
    fake = tmp_path / "gpu.so"
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    artifact = compiler.compile(path, target="host", output=tmp_path / "model.so")
    library, manifest = split_artifact(artifact.path)
    manifest.target, manifest.device = "cuda-sm80", "cuda"
    (tmp_path / "lib.so").write_bytes(library)
    runtime.artifact.write_artifact(tmp_path / "lib.so", manifest, fake)
    with pytest.raises(KilnError, match="kiln-run drives CPU artifacts"):
        bundle(fake, tmp_path / "bundle")


@needs_nvcc
@pytest.mark.parametrize("target, build", [
    ("cuda-sm80", lambda: resnet()),  # the demo model, full size
    ("jetson-orin", lambda: resnet((1, 1), width=8, size=16, classes=4)),
], ids=["cuda-sm80-resnet18", "jetson-orin-small"])
def test_cuda_artifact_holds_device_code_for_its_architecture(target, build, tmp_path):
    preset = get_target(target)
    if shutil.which(preset.export["cc"]) is None:
        pytest.skip(f"{preset.export['cc']} missing (the host compiler of {target})")
    path = save(build(), tmp_path)
    artifact = compiler.compile(path, target=target, output=tmp_path / "m.so")
    library, manifest = split_artifact(artifact.path)
    arch = preset.tvm_target["arch"]
    code = cuda.device_code(library)
    assert code and all(c["arch"] == arch for c in code)
    assert manifest.extra["device_code"] == code and manifest.device == "cuda"
    # The cubin itself is an ELF for the CUDA machine (EM_CUDA = 190).
    cubin = library[library.find(b"\x7fELF", library.find(struct.pack("<I", 0xBA55ED50))):]
    assert struct.unpack_from("<H", cubin, 18)[0] == 190
    assert _elf_machine(library) == {"x86_64": 0x3E, "aarch64": 0xB7}[preset.arch]


def test_device_code_reader_finds_nothing_in_cpu_libraries(tmp_path):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    artifact = compiler.compile(path, target="host", output=tmp_path / "m.so")
    assert cuda.device_code(split_artifact(artifact.path)[0]) == []
    with pytest.raises(KilnError, match="no device code for sm_80"):
        cuda.check_device_code(tmp_path / "m.so", "sm_80")


def _gpu_arch() -> str | None:
    """sm_XX of this machine's first CUDA GPU, or None without a GPU and driver."""
    try:
        from runtime.tvm_runtime import load_cuda_runtime, tvm_package  # noqa: PLC0415

        load_cuda_runtime()
        gpu = tvm_package().cuda(0)
        return f"sm_{gpu.compute_version.replace('.', '')}" if gpu.exist else None
    except KilnError:
        return None


@needs_nvcc
def test_cuda_artifact_runs_on_the_gpu_and_matches_onnxruntime(tmp_path):
    arch = _gpu_arch()
    if arch is None:
        pytest.skip("no CUDA GPU and driver on this machine")
    preset = next((t for t in all_targets().values() if t.device == "cuda" and t.tvm_target["arch"] == arch
                   and t.arch == platform.machine()), None)
    if preset is None:
        pytest.skip(f"no preset for this GPU ({arch})")
    path = save(resnet((1, 1), width=8, size=32, classes=10), tmp_path)
    artifact = compiler.compile(path, target=preset.name, output=tmp_path / "m.so")
    model = runtime.load(artifact.path)
    feeds = random_inputs(model.inputs)
    ok, error = outputs_match(model.run(feeds), _onnxruntime(path, feeds), rtol=1e-3, atol=1e-4)
    assert ok, error


def test_cuda_artifact_without_a_gpu_fails_clearly(tmp_path):
    if _gpu_arch() is not None:
        pytest.skip("this machine has a CUDA GPU")
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    artifact = compiler.compile(path, target="host", output=tmp_path / "model.so")
    library, manifest = split_artifact(artifact.path)
    manifest.target, manifest.device, manifest.tvm_target = "cuda-sm80", "cuda", {"kind": "cuda", "arch": "sm_80"}
    (tmp_path / "lib.so").write_bytes(library)
    fake = runtime.artifact.write_artifact(tmp_path / "lib.so", manifest, tmp_path / "gpu.so")
    with pytest.raises(KilnError, match=r"built for CUDA sm_80 \(target cuda-sm80\)"):
        runtime.load(fake)


def test_targets_cli_shows_architecture_device_and_compiler():
    listed = {t["name"]: t for t in json.loads(kiln("targets", "--json").output)}
    assert (listed["rpi4"]["arch"], listed["rpi4"]["device"], listed["rpi4"]["compiler"]) == (
        "aarch64", "cpu", "aarch64-linux-gnu-g++")
    assert (listed["cuda-sm86"]["arch"], listed["cuda-sm86"]["device"]) == ("x86_64", "cuda")
    assert not listed["rpi4"]["runs_here"] and not listed["cuda-sm86"]["runs_here"]
    text = kiln("targets").output
    assert "aarch64+cuda" in text and "x86_64+cuda" in text


@needs_cross_gcc
def test_compile_inspect_and_bundle_from_the_command_line(tmp_path):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    art = tmp_path / "m.rpi5.so"
    result = kiln("compile", path, "--target", "rpi5", "-o", art)
    assert result.exit_code == 0, result.output
    shown = kiln("inspect", art).output
    assert "target     rpi5" in shown and "runs on    aarch64 CPU with asimd, asimddp" in shown
    result = kiln("bundle", art, "-o", tmp_path / "pi")
    assert result.exit_code == 0, result.output
    assert "kiln-run" in result.output and "libtvm_runtime.so" in result.output
    assert (tmp_path / "pi" / "kiln-run").stat().st_mode & 0o111  # executable
    result = kiln("run", art, "--random")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert "built for aarch64 (target rpi5), this host is" in result.output and "Traceback" not in result.output


def test_tune_refuses_targets_it_cannot_time_here(tmp_path):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    result = kiln("tune", path, "--target", "rpi4", "--trials", 4, "--log", tmp_path / "log",
                   "--input-shape", "input=1x3x16x16")
    assert result.exit_code == 1 and "--rpc HOST:PORT --key rpi4" in result.output
    result = kiln("tune", path, "--target", "cuda-sm80", "--trials", 4, "--log", tmp_path / "log",
                   "--input-shape", "input=1x3x16x16")
    assert result.exit_code == 1 and "kiln tune searches CPU kernels only; cuda-sm80 runs on cuda" in result.output


def test_quantizing_for_an_arm_target_names_the_missing_instruction(tmp_path):
    path = save(resnet((1,), width=8, size=16, classes=4), tmp_path)
    with pytest.raises(KilnError, match="target rpi5 has no int8 dot-product instruction"):
        compiler.compile(path, target="rpi5", output=tmp_path / "m.so", quantize="int8")
