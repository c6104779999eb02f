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


def set_num_threads(threads: int) -> None:
    """Size TVM's thread pool for this process (all loaded models share it).

    TVM pins the calling thread to one core when it configures its pool; the caller's CPU affinity is put back,
    or every thread the application starts later (another runtime's pool, a server's workers) would share
    that one core.
    """
    tvm = tvm_runtime()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    # Mode 1 is "big cores": on a machine whose cores are all alike, that is every core.
    tvm.get_global_func("runtime.config_threadpool")(1, int(threads))
    if affinity is not None:
        os.sched_setaffinity(0, affinity)
