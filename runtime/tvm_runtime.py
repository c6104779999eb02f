"""Import TVM's runtime alone (no compiler), once per process."""

import os
import sys

_tvm = None
_runtime_only_requested = False


def use_runtime_only() -> None:
    """Declare that this process only runs models (`kiln run`, `kiln serve`): TVM's runtime alone is loaded even
    though the `compiler` package was imported (the CLI lives in it)."""
    global _runtime_only_requested
    _runtime_only_requested = True


def tvm_runtime():
    """Return the `tvm` module: TVM's runtime alone (TVM_USE_RUNTIME_LIB=1) in a process that does not use the
    compiler, the whole of TVM once the `compiler` package is imported (a process that loads a model and then
    compiles one needs the compiler, and TVM is imported once per process), unless use_runtime_only() was called.

    The variable is set only around the import and removed at once: child processes that compile must not
    inherit it.
    """
    global _tvm
    if _tvm is None and "compiler" in sys.modules and not _runtime_only_requested:
        import tvm  # noqa: PLC0415 - the whole of TVM, as the compiler will import it

        _tvm = tvm
    if _tvm is None:
        had = os.environ.get("TVM_USE_RUNTIME_LIB")
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
        try:
            import tvm  # noqa: PLC0415 - deliberately late, see docstring
        finally:
            if had is None:
                os.environ.pop("TVM_USE_RUNTIME_LIB", None)
            else:
                os.environ["TVM_USE_RUNTIME_LIB"] = had
        _tvm = tvm
    return _tvm


def wrap_array(array, alignment: int):
    """A TVM tensor over the numpy ARRAY's own memory (no copy). TVM's own from_dlpack insists on 64-byte
    alignment; the FFI's takes the ALIGNMENT the model's kernels were compiled for."""
    tvm_runtime()
    import tvm_ffi  # noqa: PLC0415 - already loaded by tvm_runtime(); named here for its alignment argument

    return tvm_ffi.from_dlpack(array, require_alignment=alignment, require_contiguous=True)


def load_cuda_runtime() -> None:
    """Load TVM's CUDA runtime library (it registers the CUDA device and the loader of CUDA kernels); TVM's
    runtime-only import leaves it out. Raises KilnError when the NVIDIA driver or CUDA runtime it links is missing."""
    tvm = tvm_runtime()
    loaded = tvm.base._LOADED_LIBS
    if "tvm_runtime_cuda" in loaded:
        return
    import ctypes  # noqa: PLC0415 - only CUDA artifacts need it
    from pathlib import Path  # noqa: PLC0415

    from .errors import KilnError  # noqa: PLC0415

    library = Path(loaded["tvm_runtime"]._name).resolve().parent / "libtvm_runtime_cuda.so"
    try:
        loaded["tvm_runtime_cuda"] = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)
    except OSError as err:
        raise KilnError(f"TVM's CUDA runtime cannot load ({err})".splitlines()[0],
                        "CUDA artifacts need an NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime "
                        "(libcudart.so.13, `pip install nvidia-cuda-runtime`)") from None


def usable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def set_num_threads(threads: int | None = None) -> int:
    """Size TVM's thread pool for this process (all loaded models share it); None means one per usable CPU.

    Returns the pool size TVM reports. Mode -3 lets the workers share the usable CPUs: TVM's default
    ("big cores") counted one core of two here and ran single-threaded, and it pins the calling thread;
    the caller's affinity is put back so threads the application starts later are not squeezed onto one core.
    """
    tvm = tvm_runtime()
    cpus = usable_cpus()
    affinity = set(cpus)
    tvm.get_global_func("runtime.config_threadpool")(-3, int(threads or len(cpus)), [str(c) for c in cpus])
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, affinity)
    return int(tvm.get_global_func("runtime.NumThreads")())


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
    import ctypes  # noqa: PLC0415 - only AMX artifacts need it

    from .errors import KilnError  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        raise KilnError(f"the Linux kernel refused AMX to this process (errno {ctypes.get_errno()})",
                        "use Linux 5.16 or later, or compile for a target without AMX (x86-avx512)")
    _amx_ready = True
