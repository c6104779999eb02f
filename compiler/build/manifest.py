"""The manifest writer: what a compile knows about its artifact, as the runtime reads it (runtime.artifact).

In: the loaded model, the preset, the shipped build and what the precision stage recorded. Out: a Manifest
(written into the artifact with the library by runtime.artifact.write_artifact).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import tvm
from tvm import relax, tirx

import runtime
from runtime.artifact import Manifest, TensorSpec
from runtime.errors import KilnError

from ..frontend import LoadedModel
from ..targets import TargetPreset
from ..tuning import database as tuning
from .schedule import kernel_calls
from .stage import StageBuild


def _dim(value) -> int | str:
    return int(value) if isinstance(value, tirx.IntImm) else str(value)


def output_specs(mod: tvm.IRModule, names: list[str]) -> list[TensorSpec]:
    """Output specs of `main` (shapes from Relax, symbolic dims by name) under the ONNX output NAMES."""
    ret = mod["main"].ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    specs = []
    for name, ty in zip(names, fields):
        if not isinstance(ty, relax.TensorType):
            raise KilnError(f"output {name} compiled to a {type(ty).__name__} ({ty}), not a tensor",
                            "report the model with --debug's output")
        shape = [_dim(d) for d in ty.shape.values] if ty.shape is not None else []
        specs.append(TensorSpec(name, str(ty.dtype), shape))
    return specs


def make_manifest(model: Path, loaded: LoadedModel, preset: TargetPreset, built: StageBuild, passes: list[str],
                  quantization: dict | None, db_dir: Path | None) -> Manifest:
    """The manifest of BUILT, compiled from MODEL (LOADED) for PRESET with PASSES, QUANTIZATION (the precision
    stage's entry) and the tuning database in DB_DIR (None: default schedules only)."""
    kernels = built.kernels
    return Manifest(
        source_model=model.name,
        source_sha256=loaded.sha256,
        inputs=loaded.inputs,
        bound_inputs=loaded.bound,
        outputs=[TensorSpec(s.name, loaded.narrow.get(s.name, s.dtype), s.shape)
                 for s in output_specs(built.scheduled, [o.name for o in loaded.proto.graph.output])],
        target=preset.name,
        tvm_target=dict(preset.tvm_target),
        arch=preset.arch,
        device=preset.device,
        cpu_features=list(preset.cpu_features),
        passes=passes,
        tuning={"database": str(db_dir) if db_dir and tuning.has_database(db_dir) else None,
                "records": built.records,
                "tasks_tuned": len(kernels.tuned),
                "tasks_default": len(kernels.default_rule) + len(kernels.unscheduled)},
        kernels={**kernels.to_json(), "calls": kernel_calls(built.scheduled)},
        quantization=quantization,
        tvm_version=tvm.__version__,
        kiln_version=runtime.__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        input_alignment=built.input_alignment,
        fresh_outputs=built.fresh_outputs,
    )
