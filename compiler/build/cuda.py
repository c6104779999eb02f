"""Building CUDA artifacts on a machine without a GPU: the device compiler, the driver stub, the device-code check.

TVM's CUDA module (the type that carries compiled kernels into an exported library) lives in
libtvm_runtime_cuda.so, which links against the NVIDIA driver (libcuda.so.1). Without a driver TVM skips that
library silently and the kernels cannot be packed. Kiln then builds a stub driver: a shared library named
libcuda.so.1 whose few entry points answer "no device". Loading it first satisfies the dynamic loader. The build
never calls the driver, and the stub is only ever loaded by the compiler, never by `runtime/`.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import subprocess
from pathlib import Path

from runtime.atomic import atomic_path
from runtime.errors import KilnError
from runtime.tvm_runtime import load_cuda_runtime

from .bundle import cache_dir

# The driver entry points libtvm_runtime_cuda.so imports (`nm -D --undefined-only`, apache-tvm 0.27).
_DRIVER_SYMBOLS = ("cuDeviceGetName", "cuFuncSetAttribute", "cuGetErrorName", "cuGetErrorString",
                   "cuLaunchKernelEx", "cuModuleGetFunction", "cuModuleLoadData", "cuModuleUnload",
                   "cuTensorMapEncodeTiled")
_CUDA_ERROR_NO_DEVICE = 100
_FATBIN_MAGIC = 0xBA55ED50
_FATBIN_HEADER = struct.Struct("<IHHQ")  # magic, version, header size, size of the entries that follow
_ENTRY_HEADER = struct.Struct("<HHIQ")  # kind, flags, header size, payload size
_ENTRY_ARCH_OFFSET = 28  # u32 compute capability (e.g. 80) inside an entry header
_ENTRY_KINDS = {1: "ptx", 2: "cubin"}
_ready = False


def _stub_driver() -> Path:
    """Path of Kiln's stub libcuda.so.1, built with the host C compiler on first use (cached)."""
    stub = cache_dir() / "cuda-stub" / "libcuda.so.1"
    if stub.exists():
        return stub
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise KilnError("building for CUDA without an NVIDIA driver needs a C compiler for Kiln's driver stub",
                        "install gcc")
    stub.parent.mkdir(parents=True, exist_ok=True)
    source = stub.with_suffix(".c")
    source.write_text("".join(f"int {name}(void) {{ return {_CUDA_ERROR_NO_DEVICE}; }}\n"
                              for name in _DRIVER_SYMBOLS))
    with atomic_path(stub) as tmp:
        subprocess.run([compiler, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp), str(source)],
                       check=True, capture_output=True)
    return stub


def prepare() -> None:
    """Make this (compiler) process able to build CUDA artifacts: TVM's CUDA runtime library loaded (with the stub
    driver when no real one is installed) and a device compiler chosen (nvcc on PATH, else NVRTC)."""
    global _ready
    if _ready:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        ctypes.CDLL(str(_stub_driver()), mode=ctypes.RTLD_GLOBAL)
    load_cuda_runtime()
    if "TVM_CUDA_COMPILE_MODE" not in os.environ:
        if shutil.which("nvcc"):
            os.environ["TVM_CUDA_COMPILE_MODE"] = "nvcc"
        else:
            try:
                import cuda.bindings.nvrtc  # noqa: F401, PLC0415 - TVM's default device compiler
            except ImportError:
                raise KilnError("no CUDA device compiler: nvcc is not on PATH and NVRTC is not installed",
                                "install the CUDA toolkit (nvcc, 12.x or 13.x) or `pip install cuda-bindings "
                                "nvidia-cuda-nvrtc`") from None
    _ready = True


def device_code(library: bytes) -> list[dict]:
    """The CUDA device code packed in LIBRARY: one {'kind': 'cubin'|'ptx', 'arch': 'sm_XX', 'bytes': N} per
    fatbin entry, read from the fatbin headers (empty when there is none)."""
    found, start = [], 0
    magic = struct.pack("<I", _FATBIN_MAGIC)
    while (at := library.find(magic, start)) >= 0:
        start = at + 4
        if at + _FATBIN_HEADER.size > len(library):
            break
        _magic, _version, header_size, size = _FATBIN_HEADER.unpack_from(library, at)
        entry, end = at + header_size, min(at + header_size + size, len(library))
        while entry + _ENTRY_ARCH_OFFSET + 4 <= end:
            kind, _flags, entry_header, payload = _ENTRY_HEADER.unpack_from(library, entry)
            if entry_header == 0:
                break
            arch = struct.unpack_from("<I", library, entry + _ENTRY_ARCH_OFFSET)[0]
            found.append({"kind": _ENTRY_KINDS.get(kind, f"kind-{kind}"), "arch": f"sm_{arch}", "bytes": payload})
            entry += entry_header + payload
    return found


def check_device_code(library: Path, arch: str) -> list[dict]:
    """The device code in the linked LIBRARY; a KilnError when none of it is for ARCH (e.g. 'sm_80')."""
    code = device_code(Path(library).read_bytes())
    if not any(c["arch"] == arch for c in code):
        raise KilnError(f"the CUDA build produced no device code for {arch} (found: "
                        f"{', '.join(sorted({c['arch'] for c in code})) or 'none'})",
                        "report this with `kiln compile --debug` output; check nvcc supports the architecture")
    return code
