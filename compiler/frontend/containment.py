"""onnx's C++ checker and shape inference kept from taking the compiler down with them.

Structure-aware fuzzing of the real-model corpus (tests/fuzz/structured.py) found models that pass onnx's checks
field by field but kill the process inside onnx's own C++: a GatherND with a negative batch_dims segfaults its
shape inference, and a ConstantOfShape of 2**31 values concatenated into a shape makes its data propagation
build a 2**31-entry shape (the kernel's OOM killer ends the process, no Python exception is raised). Two guards:

- `in_child(function)`: FUNCTION runs in a forked child; a child killed by a signal becomes ChildDied here. Used
  for the checker, which runs onnx's strict shape inference first, so a model that would crash it later is
  refused in one line before any other work.
- `bounded_memory(budget)`: while it is open, the process's address space may grow by at most BUDGET bytes (and
  never past what the machine has available; RLIMIT_AS), so a runaway allocation raises MemoryError
  (std::bad_alloc) instead of drawing the OOM killer. Used around onnx's in-process shape inference, with
  `inference_budget(model)`: 2 GiB plus four times the serialized model (onnx copies the model as bytes and back).
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

Result = TypeVar("Result")
BASE_BUDGET = 2 << 30  # bytes of address space onnx's inference may take beyond four copies of the model
FATAL_SIGNALS = (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL)


class ChildDied(Exception):
    """The forked child was killed by a signal (segfault, abort) before it answered."""

    def __init__(self, signal_number: int):
        self.signal_name = signal.Signals(signal_number).name if signal_number in signal.Signals._value2member_map_ \
            else f"signal {signal_number}"
        super().__init__(self.signal_name)


def inference_budget(model) -> int:
    """Bytes of address space onnx's checker or shape inference may take for MODEL (a ModelProto)."""
    return BASE_BUDGET + 4 * model.ByteSize()


def in_child(function: Callable[[], Result], budget: int | None = None) -> Result:
    """FUNCTION() run in a forked child under bounded_memory(BUDGET); its (picklable) return value, or the
    exception it raised re-raised here. ChildDied when the child is killed before it answers. Runs in this
    process where fork is not available."""
    if not hasattr(os, "fork"):
        return function()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, then leave without running the parent's exit handlers
        status = 0
        try:
            os.close(read_end)
            for number in FATAL_SIGNALS:  # not TVM's handler, which prints a backtrace: the parent reports it
                signal.signal(number, signal.SIG_DFL)
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)  # file descriptor 2: sys.stderr may be a test runner's buffer
            with bounded_memory(budget):
                outcome = ("value", function())
            payload = pickle.dumps(outcome)
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent
            try:
                payload = pickle.dumps(("error", err))
            except Exception:  # noqa: BLE001 - an exception that does not pickle goes back as its text
                payload = pickle.dumps(("error", RuntimeError(f"{type(err).__name__}: {err}")))
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001
            status = 1
        os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(wait_status) or not payload:
        raise ChildDied(os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else signal.SIGKILL)
    kind, value = pickle.loads(payload)
    if kind == "error":
        raise value
    return value


def _kilobytes(path: str, key: str) -> int | None:
    """The value of KEY (a line `KEY: N kB`) in the /proc file PATH, in bytes; None where it cannot be read."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextmanager
def bounded_memory(budget: int | None = None) -> Iterator[None]:
    """While open, the address space may grow by BUDGET bytes at most, and never past what the machine has
    available: a larger allocation fails (MemoryError) instead of growing until the OOM killer ends the process.
    Does nothing where the limits cannot be read or set."""
    available, mapped = _kilobytes("/proc/meminfo", "MemAvailable"), _kilobytes("/proc/self/status", "VmSize")
    if available is None or mapped is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + min(available, budget if budget is not None else available)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield  # a tighter limit is already in force
        return
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
