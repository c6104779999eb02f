"""`kiln compile --dump KINDS DIR` and `--pass-times`: the intermediate forms of a compile, and time per pass."""

from __future__ import annotations

from pathlib import Path

import tvm
from tvm import tirx

from runtime.atomic import atomic_write
from runtime.errors import KilnError

KINDS = ("relax", "tir", "ll", "asm")


def parse_kinds(text: str) -> tuple[str, ...]:
    """'tir,ll' -> ('tir', 'll'); unknown kinds raise a KilnError that lists the known ones."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise KilnError(f"unknown --dump kind(s): {', '.join(unknown) or '(none)'}", f"use some of {','.join(KINDS)}")
    return kinds


class Dumper:
    """Writes the forms asked for into one folder as the compile reaches them; does nothing when not asked."""

    def __init__(self, folder: str | Path | None, kinds: tuple[str, ...] = KINDS):
        self.folder = Path(folder) if folder else None
        self.kinds = kinds if folder else ()
        self.written: list[Path] = []

    def _write(self, name: str, text: str) -> None:
        self.written.append(atomic_write(self.folder / name, text))

    def graph(self, mod: tvm.IRModule) -> None:
        """The Relax module after Kiln's graph passes (fused kernels still unscheduled)."""
        if "relax" in self.kinds:
            self._write("relax.py", mod.script())

    def kernels(self, mod: tvm.IRModule) -> None:
        """Every scheduled TIR kernel, one file."""
        if "tir" in self.kinds:
            funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
            self._write("kernels.tir.py", tvm.IRModule(funcs).script())

    def machine_code(self, executable) -> None:
        """LLVM IR and assembly of the kernels."""
        modules = [m for m in executable.mod.imports if m.kind == "llvm"]
        for kind, suffix in (("ll", "kernels.ll"), ("asm", "kernels.s")):
            if kind in self.kinds and modules:
                self._write(suffix, "\n".join(m.inspect_source(kind) for m in modules))
