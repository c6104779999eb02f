"""Target presets: load and validate targets/*.json, and pick the best one for this machine."""

from __future__ import annotations

import json
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from runtime.artifact import host_cpu_features
from runtime.errors import KilnError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"
TUNING_LOGS = TARGETS_DIR.parent / "tuning_logs"  # one tuning database folder per target
_REQUIRED = ("description", "arch", "tvm_target", "export")


@dataclass(frozen=True)
class TargetPreset:
    """One targets/NAME.json: the TVM target dict, how to link for it, and what the machine running it needs."""

    name: str
    description: str
    arch: str
    cpu_features: tuple[str, ...]
    tvm_target: dict
    export: dict
    vector_lanes_fp32: int
    tuning: dict
    device: str = "cpu"  # where the kernels run: "cpu", or "cuda" (then arch is the host CPU's)

    def tvm(self):
        """The TVM Target object (imports the compiler's TVM)."""
        import tvm  # noqa: PLC0415 - keep `kiln targets` fast

        return tvm.target.Target(self.tvm_target)

    def runs_here(self) -> bool:
        """True when this machine's CPU can run code built for this CPU preset (GPU presets: False)."""
        return (self.device == "cpu" and self.arch == platform.machine()
                and set(self.cpu_features) <= host_cpu_features())

    def has(self, feature: str) -> bool:
        """Whether code built for this preset may use the CPU FEATURE (a /proc/cpuinfo flag such as amx_int8)."""
        return feature in self.cpu_features

    def require(self, feature: str, what: str) -> None:
        """A clear error when this preset lacks FEATURE (the instruction WHAT names), listing the presets that
        have it."""
        if not self.has(feature):
            with_it = [name for name, t in all_targets().items() if t.has(feature)]
            raise KilnError(f"target {self.name} has no {what} ({feature})",
                            f"use a target that has it: {', '.join(with_it) or 'none known'}")

    @property
    def compiler(self) -> str:
        """The (cross) compiler command that links this preset's libraries."""
        return self.export.get("cc", "g++")

    def compiler_installed(self) -> bool:
        return shutil.which(self.compiler) is not None

    def check_compiler(self) -> None:
        """A clear error when the (cross) compiler that links this preset's libraries is not installed."""
        cc = self.compiler
        if not self.compiler_installed():
            package = self.export.get("debian_package")
            how = (f"install it: apt-get install {package} (`make setup` does, as root)" if package
                   else "install a C++ compiler")
            raise KilnError(f"target {self.name} links with {cc}, which is not installed", how)


def _load(path: Path) -> TargetPreset:
    try:
        data = json.loads(path.read_text())
    except ValueError as err:
        raise KilnError(f"target file {path} is not valid JSON ({err})", "fix or remove the file") from None
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise KilnError(f"target file {path} lacks {', '.join(missing)}", "see targets/host.json for the fields")
    return TargetPreset(
        name=path.stem,
        description=data["description"],
        arch=data["arch"],
        cpu_features=tuple(data.get("cpu_features", ())),
        tvm_target=data["tvm_target"],
        export=data["export"],
        vector_lanes_fp32=int(data.get("vector_lanes_fp32", 4)),
        tuning=data.get("tuning", {}),
        device=data.get("device", "cpu"),
    )


def all_targets() -> dict[str, TargetPreset]:
    """Every preset in targets/, by name."""
    return {p.stem: _load(p) for p in sorted(TARGETS_DIR.glob("*.json"))}


def _has_tuning_records(preset: TargetPreset) -> bool:
    folder = TUNING_LOGS / preset.name
    return folder.is_dir() and any(folder.iterdir())


def best_for_host(prefer: str | None = None) -> TargetPreset:
    """The preset this machine runs best: the one with feature PREFER (e.g. amx_int8 for an int8 build) if any,
    then the widest vectors, then one with committed tuning records (its float kernels are tuned), then the
    most CPU features."""
    usable = [t for t in all_targets().values() if t.runs_here()]
    if not usable:
        raise KilnError(f"no target preset runs on this {platform.machine()} machine", "add one under targets/")
    return max(usable, key=lambda t: (prefer in t.cpu_features, t.vector_lanes_fp32, _has_tuning_records(t),
                                      len(t.cpu_features)))


def get_target(name: str, prefer: str | None = None) -> TargetPreset:
    """The preset called NAME; 'auto' means the best preset for this machine (see best_for_host for PREFER)."""
    if name == "auto":
        return best_for_host(prefer)
    presets = all_targets()
    if name not in presets:
        raise KilnError(f"unknown target '{name}'", f"known targets: {', '.join(['auto', *presets])}")
    return presets[name]
