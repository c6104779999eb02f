"""TVM's runtime, loaded once per process: the FFI (tvm_ffi) and libtvm_runtime.so.

A process that only runs models never imports the `tvm` package: its import registers the Python classes of the
whole compiler's object types and took 0.3 s of a 0.45 s start-up (MobileNetV2). The runtime library is loaded
beside tvm_ffi instead, and the few runtime calls Kiln makes go through its registered functions (below). A
process that imports the `compiler` package gets the whole of TVM (a process that loads a model and then
compiles one needs it; TVM's compiler library links the same runtime library, so the order does not matter).
"""

import ctypes
import functools
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

_ready = False
_runtime_only_requested = False
_cuda_library = None
_KDL_CPU, _KDL_CUDA = 1, 2


def use_runtime_only() -> None:
    """Declare that this process only runs models (`kiln run`, `kiln serve`): TVM's runtime alone is loaded even
    though the `compiler` package was imported (the CLI lives in it)."""
    global _runtime_only_requested
    _runtime_only_requested = True


def runtime_ffi():
    """The tvm_ffi module, with TVM's runtime library loaded (its VM, thread pool and tensor functions
    registered): the whole `tvm` package where the compiler is imported, libtvm_runtime.so alone otherwise."""
    global _ready
    if not _ready:
        if "compiler" in sys.modules and not _runtime_only_requested:
            import tvm  # noqa: F401, PLC0415 - the whole of TVM, as the compiler will import it
        elif "tvm" not in sys.modules:
            import tvm_ffi  # noqa: PLC0415 - loads libtvm_ffi.so, which the runtime library links

            ctypes.CDLL(str(runtime_library_dir() / "libtvm_runtime.so"), mode=ctypes.RTLD_GLOBAL)
        _ready = True
    import tvm_ffi  # noqa: PLC0415

    return tvm_ffi


def runtime_library_dir() -> Path:
    """The folder of TVM's runtime libraries (TVM_LIBRARY_PATH, else the installed tvm package's lib/), found
    without importing the package."""
    configured = os.environ.get("TVM_LIBRARY_PATH")
    if configured and (Path(configured) / "libtvm_runtime.so").is_file():
        return Path(configured)
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("apache-tvm is not installed (pip install apache-tvm)")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def tvm_package():
    """The `tvm` package, for what only it has (kernel timing, dtypes numpy lacks): imported here with TVM's
    runtime library alone unless the compiler already imported all of it. The variable that asks for that is set
    only around the import: child processes that compile must not inherit it."""
    runtime_ffi()
    if "tvm" not in sys.modules:
        had = os.environ.get("TVM_USE_RUNTIME_LIB")
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
        try:
            import tvm  # noqa: F401, PLC0415
        finally:
            if had is None:
                os.environ.pop("TVM_USE_RUNTIME_LIB", None)
            else:
                os.environ["TVM_USE_RUNTIME_LIB"] = had
    return sys.modules["tvm"]


@functools.cache
def _function(name: str):
    return runtime_ffi().get_global_func(name)


def _call(name: str, *args):
    return _function(name)(*args)  # looked up once: copies and conversions run on every model call


@functools.lru_cache(maxsize=None)  # on every output of every call: np.dtype and its name take 3 us
def numpy_dtype(name: str) -> np.dtype | None:
    """The numpy dtype that is TVM's dtype NAME exactly (float32, int8, bool, ...); None for one numpy lacks or
    holds only through ml_dtypes (bfloat16, float8_e4m3fn, int4: DLPack and raw copies cannot carry those)."""
    try:
        dtype = np.dtype(name)
    except TypeError:
        return None
    return dtype if dtype.kind in "biuf" and str(dtype) == name else None


def load_module(path: str):
    """The TVM library at PATH, loaded."""
    return runtime_ffi().load_module(str(path))


def cpu():
    """The CPU device."""
    return runtime_ffi().device("cpu", 0)


def cuda(index: int = 0):
    """CUDA GPU INDEX (check it with device_exists)."""
    return runtime_ffi().device("cuda", index)


def device_exists(device) -> bool:
    """Whether DEVICE is present on this machine."""
    return _call("runtime.GetDeviceAttr", device.dlpack_device_type(), device.index, 0) != 0


def empty(shape, dtype: str, device):
    """An uninitialized tensor of SHAPE and DTYPE on DEVICE."""
    return _call("runtime.TVMTensorAllocWithScope", runtime_ffi().Shape(tuple(shape)), dtype, device, None)


def copy_into(tensor, array: np.ndarray):
    """Copy the numpy ARRAY (same shape; its bytes as TENSOR's dtype holds them) into TENSOR."""
    array = np.ascontiguousarray(array)
    _call("runtime.TVMTensorCopyFromBytes", tensor, array.ctypes.data_as(ctypes.c_void_p), array.nbytes)


def to_device(array: np.ndarray, device, dtype: str | None = None):
    """A tensor on DEVICE holding a copy of ARRAY (as DTYPE, when given, where ARRAY holds its codes)."""
    tensor = empty(array.shape, dtype or str(array.dtype), device)
    copy_into(tensor, array)
    return tensor


def as_dtype(tensor, dtype: str):
    """A view of TENSOR's memory as DTYPE (of the same width: bfloat16 over uint16 codes)."""
    return _call("runtime.TVMTensorCreateView", tensor, tensor.shape, dtype, 0)


def to_numpy(tensor) -> np.ndarray:
    """A numpy copy of TENSOR (on any device). Dtypes numpy lacks go through TVM's own conversion."""
    known = numpy_dtype(str(tensor.dtype))
    if known is None:  # bfloat16, int4, float8 ...: rare outputs
        return tvm_package().runtime.Tensor.numpy(tensor)
    out = np.empty(tuple(tensor.shape), known)
    _call("runtime.TVMTensorCopyToBytes", tensor, out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
    return out


def as_numpy(tensor) -> np.ndarray:
    """A numpy array over the memory of the CPU tensor TENSOR (no copy; it keeps TENSOR alive), a copy for dtypes
    numpy lacks."""
    if numpy_dtype(str(tensor.dtype)) is None:
        return to_numpy(tensor)
    return np.from_dlpack(tensor)


def wrap_array(array, alignment: int):
    """A TVM tensor over the numpy ARRAY's own memory (no copy). TVM's own from_dlpack insists on 64-byte
    alignment; the FFI's takes the ALIGNMENT the model's kernels were compiled for."""
    return runtime_ffi().from_dlpack(array, require_alignment=alignment, require_contiguous=True)


def load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime library (it registers the CUDA device and the loader of CUDA kernels); TVM's
    runtime-only import leaves it out. Raises KilnError when the NVIDIA driver or CUDA runtime it links is missing."""
    global _cuda_library
    runtime_ffi()
    tvm = sys.modules.get("tvm")
    loaded = getattr(getattr(tvm, "base", None), "_LOADED_LIBS", {})
    if _cuda_library is not None or "tvm_runtime_cuda" in loaded:
        return
    from .errors import KilnError  # noqa: PLC0415

    try:
        _cuda_library = ctypes.CDLL(str(runtime_library_dir() / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise KilnError(f"TVM's CUDA runtime cannot load ({err})".splitlines()[0],
                        "CUDA artifacts need an NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime "
                        "(libcudart.so.13, `pip install nvidia-cuda-runtime`)") from None
    loaded["tvm_runtime_cuda"] = _cuda_library


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def set_num_threads(threads: int | None = None) -> int:
    """Size TVM's thread pool for this process (all loaded models share it); None means one per usable CPU.

    Returns the pool size TVM reports. Mode -3 lets the workers share the usable CPUs: TVM's default
    ("big cores") counted one core of two here and ran single-threaded, and it pins the calling thread;
    the caller's affinity is put back so threads the application starts later are not squeezed onto one core.
    """
    cpus = usable_cpus()
    affinity = set(cpus)
    _call("runtime.config_threadpool", -3, int(threads or len(cpus)), [str(c) for c in cpus])
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, affinity)
    return pool_size()


def pool_size() -> int:
    """Workers in the calling thread's TVM pool."""
    return int(_call("runtime.NumThreads"))


_ARCH_REQ_XCOMP_PERM = 0x1023  # arch_prctl: ask the Linux kernel for an extended state component
_XFEATURE_XTILEDATA = 18  # the AMX tile data
_SYS_ARCH_PRCTL = 158  # x86-64
_amx_ready = False


def enable_amx() -> None:
    """Allow this process to use AMX tiles (Linux asks each process to request them once; without it the first
    tile instruction kills the process with SIGILL). Raises KilnError when the kernel refuses."""
    global _amx_ready
    if _amx_ready:
        return
    from .errors import KilnError  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        raise KilnError(f"the Linux kernel refused AMX to this process (errno {ctypes.get_errno()})",
                        "use Linux 5.16 or later, or compile for a target without AMX (x86-avx512)")
    _amx_ready = True
