"""CompileOptions: everything `compiler.compile` was asked for, checked once, with the preset and paths it
resolves to."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.errors import KilnError

from .build.dump import KINDS
from .kernels.dot_product import BF16, VNNI
from .quantize.bf16 import PRECISIONS
from .targets import TargetPreset, get_target
from .tuning import database as tuning

QUANTIZE_MODES = (None, "none", "int8", "auto")


@dataclass
class CompileOptions:
    """The options of one compile (compiler.compile documents each); check() raises the one-line error for a
    combination Kiln does not build."""

    model: Path
    target: str = "auto"
    output: Path | None = None
    input_shapes: dict[str, list[int]] | None = None
    tuning_log: str | Path | None = None
    layout: str = "NHWC"
    dump_dir: str | Path | None = None
    dump_kinds: tuple[str, ...] = KINDS
    pass_times: bool = False
    quantize: str | None = None
    calibration: str | None = None
    calibration_method: str = "minmax"
    max_accuracy_drop: float | None = None
    precision: str = "fp32"
    winograd: bool = True
    input_values: dict[str, list[float]] | None = None
    notes: list[str] = field(default_factory=list, repr=False)  # warnings check() has to pass on

    def __post_init__(self):
        self.model = Path(self.model)
        self.output = Path(self.output) if self.output else None

    @property
    def int8(self) -> bool:
        """Whether the user asked for int8 (--quantize int8 or auto)."""
        return self.quantize in ("int8", "auto")

    def check(self) -> CompileOptions:
        """Raise a KilnError naming the problem and the fix for options that do not go together; fill in the
        default calibration of an int8 build. Returns self."""
        if self.quantize not in QUANTIZE_MODES:
            raise KilnError(f"unknown quantization '{self.quantize}'", "use --quantize int8 or auto (or leave it out)")
        if not self.int8 and (self.calibration or self.max_accuracy_drop is not None):
            given = "--calibration" if self.calibration else "--max-accuracy-drop"
            raise KilnError(f"{given} applies to int8 builds only", f"add --quantize int8 (or auto), or drop {given}")
        if self.precision not in PRECISIONS or (self.precision != "fp32" and self.int8):
            raise KilnError(f"precision '{self.precision}' with quantize '{self.quantize}' is not a combination Kiln "
                            f"builds", f"use --precision {' or '.join(PRECISIONS)}, and bf16 without --quantize")
        if self.output is not None and Path(self.output).suffix != ".so":
            raise KilnError(f"the artifact path {self.output} does not end in .so",
                            f"name it {Path(self.output).with_suffix('.so').name}: an artifact is a shared library, "
                            "and the runtime loads it by that suffix")
        if self.int8 and not self.calibration:
            self.calibration = "random:32"
            self.notes.append("warning: no --calibration given: calibrating on 32 random inputs (give real samples "
                              "for meaningful ranges)")
        return self

    def preset(self) -> TargetPreset:
        """The target preset: the named one, or for 'auto' the best for this machine (one with AMX first when
        int8 or bf16 is asked for); its (cross) compiler is checked to be installed."""
        prefer = VNNI.amx_feature if self.int8 else BF16.amx_feature if self.precision == "bf16" else None
        preset = get_target(self.target, prefer=prefer)
        preset.check_compiler()
        return preset

    def artifact_path(self, preset: TargetPreset) -> Path:
        """Where the artifact goes: the given output, else MODEL's folder / STEM.TARGET.so."""
        return self.output or self.model.with_name(f"{self.model.stem}.{preset.name}.so")

    def database_dir(self, preset: TargetPreset) -> Path | None:
        """The tuning database folder to apply: the given one, None for 'none', else tuning_logs/TARGET."""
        if str(self.tuning_log) == "none":
            return None
        return Path(self.tuning_log) if self.tuning_log else tuning.database_dir(preset.name)

    def __str__(self) -> str:
        shown = {k: v for k, v in asdict(self).items() if k != "notes" and v not in (None, (), [])}
        return ", ".join(f"{k}={v}" for k, v in shown.items())
