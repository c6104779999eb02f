"""Import TVM's runtime alone (no compiler), once per process."""

import os

_tvm = None


def tvm_runtime():
    """Return the `tvm` module, imported with TVM_USE_RUNTIME_LIB=1 unless the compiler already loaded it.

    The variable is set only around the import and removed at once: child processes that compile must not
    inherit it.
    """
    global _tvm
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
