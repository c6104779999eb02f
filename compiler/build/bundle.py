"""`kiln bundle`: an artifact plus everything needed to run it on its board, without Python.

The bundle is a folder: the artifact, TVM's runtime libraries for the artifact's architecture (from the apache-tvm
and apache-tvm-ffi wheels for that platform, fetched from PyPI once and cached) and `kiln-run`, a small C++ runner
(runtime/native/kiln_run.cc) built with the target's (cross) compiler. Copy the folder to the board and run
`./kiln-run model.so -i input.npy -o out/`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from runtime.artifact import read_manifest
from runtime.atomic import atomic_path
from runtime.errors import KilnError
from runtime.scratch import scratch_dir

from ..targets import TargetPreset, get_target

RUNNER_SOURCE = Path(__file__).resolve().parents[2] / "runtime" / "native" / "kiln_run.cc"
# Where each runtime library sits inside its wheel.
_WHEEL_MEMBERS = {"libtvm_runtime.so": "tvm/lib/libtvm_runtime.so",
                  "libtvm_runtime_cuda.so": "tvm/lib/libtvm_runtime_cuda.so",
                  "libtvm_ffi.so": "tvm_ffi/lib/libtvm_ffi.so"}


def cache_dir() -> Path:
    """Kiln's cache folder: $KILN_CACHE, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln."""
    if os.environ.get("KILN_CACHE"):
        return Path(os.environ["KILN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln"


def _versions() -> tuple[str, str]:
    return importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi")


def _installed(name: str) -> Path:
    """The runtime library NAME of the installed (host) wheels."""
    package = _WHEEL_MEMBERS[name].split("/", 1)[0]
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent / _WHEEL_MEMBERS[name].split("/", 1)[1]


def _fetch(arch: str, folder: Path) -> None:
    """Download the apache-tvm / apache-tvm-ffi wheels of this Kiln's versions for ARCH and unpack their runtime
    libraries into FOLDER (atomically: a folder is complete or absent)."""
    tvm_version, ffi_version = _versions()
    python = f"{sys.version_info.major}{sys.version_info.minor}"
    with scratch_dir("kiln-wheels-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--platform", f"manylinux_2_28_{arch}", "--python-version", python, "-d", tmp,
                   f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise KilnError(f"could not download TVM's runtime for {arch} from PyPI ({last})",
                            "check the network, or copy the wheels' libraries into " + str(folder))
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder.parent))
        for wheel in Path(tmp).glob("*.whl"):
            with zipfile.ZipFile(wheel) as archive:
                for name, member in _WHEEL_MEMBERS.items():
                    if member in archive.namelist():
                        (staging / name).write_bytes(archive.read(member))
        missing = [n for n in _WHEEL_MEMBERS if not (staging / n).exists()]
        if missing:
            shutil.rmtree(staging)
            raise KilnError(f"the {arch} wheels lack {', '.join(missing)}", "check the apache-tvm version")
        os.replace(staging, folder)


def runtime_libraries(arch: str, device: str = "cpu") -> list[Path]:
    """TVM's runtime libraries for ARCH (libtvm_runtime.so, libtvm_ffi.so; plus libtvm_runtime_cuda.so for a CUDA
    DEVICE): this machine's own for its architecture, else fetched from PyPI once into the cache."""
    names = ["libtvm_runtime.so", "libtvm_ffi.so"] + (["libtvm_runtime_cuda.so"] if device == "cuda" else [])
    if arch == platform.machine():
        return [_installed(n) for n in names]
    tvm_version, ffi_version = _versions()
    folder = cache_dir() / "runtime" / f"tvm-{tvm_version}-ffi-{ffi_version}" / arch
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        _fetch(arch, folder)
    return [folder / n for n in names]


def build_runner(preset: TargetPreset, libraries: list[Path], out: Path) -> Path:
    """Compile kiln-run for PRESET's architecture with its (cross) compiler, linked against LIBRARIES (found
    beside the binary at run time)."""
    preset.check_compiler()
    include = _installed("libtvm_ffi.so").parent.parent / "include"
    lib_dirs = [f"-L{d}" for d in dict.fromkeys(lib.parent for lib in libraries)]
    with atomic_path(out) as tmp:
        command = [preset.export.get("cc", "g++"), "-O2", "-std=c++17", f"-I{include}", "-o", str(tmp),
                   str(RUNNER_SOURCE), *lib_dirs, "-Wl,--no-as-needed", "-l:libtvm_runtime.so",
                   "-l:libtvm_ffi.so", "-Wl,-rpath,$ORIGIN"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise KilnError(f"building kiln-run for {preset.arch} failed: "
                            f"{(done.stderr.strip().splitlines() or ['no output'])[0]}",
                            "check the cross compiler installation")
    out.chmod(0o755)
    return out


@dataclass
class Bundle:
    """A folder that runs one artifact on its board: the files, and the command that runs it there."""

    folder: Path
    files: list[Path]
    command: str

    @property
    def size_mb(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e6


def bundle(artifact: str | Path, out_dir: str | Path) -> Bundle:
    """Write ARTIFACT, TVM's runtime libraries for its architecture and kiln-run into OUT_DIR."""
    artifact, out_dir = Path(artifact), Path(out_dir)
    manifest = read_manifest(artifact)
    preset = get_target(manifest.target)
    if preset.device != "cpu":
        raise KilnError(f"kiln-run drives CPU artifacts; {artifact.name} was built for {preset.device}",
                        "run CUDA artifacts with the Python runtime (runtime.load)")
    libraries = runtime_libraries(manifest.arch)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for source in [artifact, *libraries]:
        target = out_dir / source.name
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        files.append(target)
    files.append(build_runner(preset, libraries, out_dir / "kiln-run"))
    return Bundle(out_dir, files, f"./kiln-run {artifact.name} -i input.npy -o out/")
