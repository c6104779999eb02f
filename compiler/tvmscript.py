"""TVMScript functions parsed without the stack walk that made each one cost about 0.1 s.

Each `@T.prim_func` calls `inspect.stack()`, which looks up the module and source lines of every frame on the
stack; frames of the import machinery have no source file, and each such lookup scans `sys.modules`. The parser
reads only the frames' locals and the decorator's line, which a plain walk of the frames gives. TVM's tensor
intrinsics (248 functions, imported by MetaSchedule for every tune) took 34 s with inspect's walk, 2 s with this
one (2-core Xeon, 2026-12-04), and register the same intrinsics.
"""

from __future__ import annotations

import inspect
import linecache
import sys
from contextlib import contextmanager


def _frames(context: int = 1) -> list[inspect.FrameInfo]:
    """inspect.stack() for the caller, with each frame's own line as its code context (one line whatever
    CONTEXT asks for: all the TVMScript parser reads) and no module lookups."""
    infos, frame = [], sys._getframe(1)  # noqa: SLF001 - where inspect.stack() starts too
    while frame is not None:
        code = frame.f_code
        line = linecache.getline(code.co_filename, frame.f_lineno) if context > 0 else ""
        infos.append(inspect.FrameInfo(frame, code.co_filename, frame.f_lineno, code.co_name,
                                       [line] if line else None, 0 if line else None))
        frame = frame.f_back
    return infos


@contextmanager
def quick_parse():
    """Within it, TVMScript decorators walk the stack with _frames instead of inspect.stack."""
    saved = inspect.stack
    inspect.stack = _frames
    try:
        yield
    finally:
        inspect.stack = saved


def import_tensor_intrinsics() -> None:
    """Import tvm.s_tir.tensor_intrin (once per process) under quick_parse, before MetaSchedule's TuneContext
    imports it the slow way."""
    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        with quick_parse():
            import tvm.s_tir.tensor_intrin  # noqa: F401, PLC0415 - registers the intrinsics
