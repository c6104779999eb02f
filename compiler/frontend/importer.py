"""Load an ONNX file, check it, fix the shapes asked for, and import it into Relax, with errors a user can act on
(the frontend stage: its package docstring says what comes in and out)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from runtime.artifact import TensorSpec
from runtime.errors import KilnError

from .checker import check_model
from .containment import bounded_memory, inference_budget
from .control_flow import unroll_control_flow
from .converters import kiln_converters
from .fold_shapes import fold_shape_computations
from .functions import expand_functions, has_function_body
from .index_ranges import input_index_ranges
from .narrow_types import rewrite_narrow_types
from .op_rewrites import rewrite_model
from .opsets import DEFAULT_DOMAINS, default_opset
from .qoperator import to_qdq
from .shape_inputs import bind_hint, defaulted_operands
from .shape_values import resolve_shape_values
from .symbolic_shapes import rebuild_symbolic_shapes

log = logging.getLogger(__name__)

# TVM's importer is written against these opsets; models outside are converted with onnx's version converter.
MIN_OPSET, MAX_OPSET = 11, 23
# ONNX Runtime's contrib ops (what its transformer optimizer writes) that TVM's importer converts as ORT defines them
CONTRIB_OPS = {("com.microsoft", op) for op in ("Attention", "SkipLayerNormalization", "EmbedLayerNormalization",
                                                "BiasGelu", "FastGelu", "Gelu")}


@dataclass
class LoadedModel:
    """A checked, shape-inferred ONNX model with its interface."""

    proto: onnx.ModelProto
    path: Path
    sha256: str
    inputs: list[TensorSpec]
    opset: int
    bound: dict[str, dict] = field(default_factory=dict)  # inputs fixed to a value (--input-value), by name
    narrow: dict[str, str] = field(default_factory=dict)  # inputs / outputs carried as uint8 codes: their dtypes


def parse_shape_overrides(texts: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """Parse `name=1x3x224x224` strings into {name: [1, 3, 224, 224]}."""
    shapes = {}
    for text in texts:
        name, _, dims = text.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.lower().split("x")]
        except ValueError:
            name = ""
        if not name or any(d <= 0 for d in shapes.get(name, [0])):
            raise KilnError(f"bad --input-shape '{text}'", "write it as NAME=DxDxD, e.g. data=1x3x224x224")
    return shapes


def parse_input_values(texts: list[str] | tuple[str, ...]) -> dict[str, list[float]]:
    """Parse `name=0,2` strings into {name: [0.0, 2.0]}."""
    values = {}
    for text in texts:
        name, _, listed = text.partition("=")
        try:
            values[name] = [float(v) for v in listed.split(",")]
        except ValueError:
            name = ""
        if not name:
            raise KilnError(f"bad --input-value '{text}'", "write it as NAME=V,V,..., e.g. axes=1,2")
    return values


def _bind_inputs(graph: onnx.GraphProto, values: dict[str, list[float]]) -> dict[str, dict]:
    """Make each input named in VALUES a weight holding that value (reshaped to the input's shape), so the
    shapes, axes or sizes it decides are known at compile time; returns what the manifest records of each."""
    names = [i.name for i in graph.input]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise KilnError(f"--input-value names unknown input(s) {', '.join(unknown)}",
                        f"the model's inputs are {', '.join(names)}")
    bound, kept = {}, []
    for value in graph.input:
        if value.name not in values:
            kept.append(value)
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        given = np.array(values[value.name], dtype=dtype)
        shape = dims if None not in dims else [given.size] if len(dims) == 1 else None
        if shape is None or int(np.prod(shape)) != given.size:
            raise KilnError(f"--input-value {value.name}: {given.size} value(s) do not fill its shape "
                            f"{'x'.join(str(d or '?') for d in dims) or 'scalar'}", "give one value per element")
        array = given.reshape(shape)
        graph.initializer.append(onnx.numpy_helper.from_array(array, value.name))
        bound[value.name] = {"dtype": str(array.dtype), "shape": list(array.shape), "value": array.tolist()}
    del graph.input[:]
    graph.input.extend(kept)
    return bound


def _read(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise KilnError(f"model file not found: {path}", "check the path")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError) as err:
        raise KilnError(f"{path} is not a valid ONNX file ({type(err).__name__})",
                        "the file may be truncated or not ONNX; re-export the model") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise KilnError(f"{path} is not a valid ONNX file (no graph)",
                        "the file may be truncated or not ONNX; re-export the model")
    helper = onnx.external_data_helper
    locations = {helper.ExternalDataInfo(t).location for t in helper._get_all_tensors(model)
                 if helper.uses_external_data(t)}
    missing = sorted(loc for loc in locations if not (path.parent / loc).is_file())
    if missing:
        raise KilnError(f"{path}: external data file(s) missing: {', '.join(missing)}",
                        "keep the model's data file(s) in the same folder as the .onnx file")
    try:
        helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, onnx.checker.ValidationError) as err:
        raise KilnError(f"{path}: cannot read external data ({str(err).splitlines()[0]})",
                        "re-export the model with its data file(s)") from None
    return model


def _normalise_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    opset = default_opset(model)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model
    goal = min(max(opset, MIN_OPSET), MAX_OPSET)
    log.info("converting %s from opset %d to %d", path.name, opset, goal)
    try:
        return onnx.version_converter.convert_version(model, goal)
    except Exception as err:  # the converter raises bare RuntimeErrors from C++
        if opset > MAX_OPSET:
            # Newer than TVM's importer was written for, and not convertible (the converter refuses types the
            # older opset lacks): import as it is; the importer takes each op's newest converter it has.
            log.info("keeping %s at opset %d (%s)", path.name, opset, str(err).splitlines()[0])
            return model
        raise KilnError(f"{path}: cannot convert opset {opset} to {goal} ({str(err).splitlines()[0]})",
                        f"re-export the model with an opset between {MIN_OPSET} and {MAX_OPSET}") from None


def _drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """Older exporters list weights as graph inputs too; they are weights, not inputs."""
    weights = {init.name for init in graph.initializer}
    real = [i for i in graph.input if i.name not in weights]
    if len(real) != len(graph.input):
        del graph.input[:]
        graph.input.extend(real)


def _name_unknown_dims(graph: onnx.GraphProto) -> None:
    """Dims an exporter wrote as -1 or '?' (PaddlePaddle) or left unnamed are dynamic, as ONNX Runtime treats
    them: each gets a name of its own (INPUT_dimI), so --input-shape can set it and TVM keeps it symbolic.
    Inferred shapes that carry a -1 are dropped (shape inference redoes them)."""
    for value in [*graph.input, *graph.output]:
        for i, dim in enumerate(value.type.tensor_type.shape.dim):
            if (dim.HasField("dim_value") and dim.dim_value < 0) or \
                    (not dim.HasField("dim_value") and dim.dim_param in ("", "?")):
                dim.Clear()
                dim.dim_param = f"{value.name}_dim{i}"
    known = [v for v in graph.value_info if all(d.dim_value >= 0 for d in v.type.tensor_type.shape.dim)]
    if len(known) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(known)


def _apply_shapes(graph: onnx.GraphProto, shapes: dict[str, list[int]]) -> None:
    names = [i.name for i in graph.input]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise KilnError(f"--input-shape names unknown input(s) {', '.join(unknown)}",
                        f"the model's inputs are {', '.join(names)}")
    for value in graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        wanted = shapes[value.name]
        if dims and len(dims) != len(wanted):
            raise KilnError(f"--input-shape {value.name} has {len(wanted)} dims, the model's input has {len(dims)}",
                            f"give {len(dims)} dims")
        for dim, size in zip(dims, wanted):
            if dim.HasField("dim_value") and dim.dim_value != size:
                raise KilnError(f"--input-shape {value.name}: dim {dim.dim_value} is fixed in the model, got {size}",
                                "only symbolic dims can be set")
        del dims[:]
        for size in wanted:
            dims.add().dim_value = size


def tensor_spec(value: onnx.ValueInfoProto, dtype: str | None = None) -> TensorSpec:
    """TensorSpec of an ONNX graph input (of DTYPE where given, else its own); unnamed unknown dims get a name of
    their own."""
    ttype = value.type.tensor_type
    shape: list[int | str] = []
    for i, dim in enumerate(ttype.shape.dim):
        if dim.HasField("dim_value"):
            shape.append(dim.dim_value)
        else:
            shape.append(dim.dim_param or f"{value.name}_dim{i}")
    return TensorSpec(value.name, dtype or str(onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)), shape)


def load_model(path: str | Path, input_shapes: dict[str, list[int]] | None = None,
               input_values: dict[str, list[float]] | None = None) -> LoadedModel:
    """Read, check, opset-convert and shape-infer the ONNX model at PATH, with INPUT_SHAPES' dims fixed and the
    inputs named in INPUT_VALUES fixed to those values."""
    path = Path(path)
    try:
        model = to_qdq(_read(path))  # ONNX Runtime's QLinear operators as QDQ: see qoperator.py
    except ValueError as err:
        raise KilnError(f"{path}: {err}", "quantize the model in QDQ format (quant_format=QuantFormat.QDQ)") from None
    check_model(model, path)  # in a child process: checker.py
    model = _normalise_opset(model, path)
    _drop_initializer_inputs(model.graph)
    _name_unknown_dims(model.graph)
    _apply_shapes(model.graph, input_shapes or {})
    bound = _bind_inputs(model.graph, input_values or {})
    model, narrow = rewrite_narrow_types(model)  # float8 / float4 / int4 tensors as bytes: narrow_types.py
    model = _prepare(model, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    index_ranges = input_index_ranges(model)
    inputs = [tensor_spec(v, narrow.get(v.name)) for v in model.graph.input]
    for spec in inputs:  # what a token id may be: the kernels clamp indices, the runtime refuses these
        if spec.name not in narrow:  # float8 / int4 codes index their lookup table, and every code is in it
            spec.valid_range = index_ranges.get(spec.name)
    return LoadedModel(model, path, digest, inputs, default_opset(model), bound, narrow)


def _prepare(model: onnx.ModelProto, path: Path, expand_everything: bool = False) -> onnx.ModelProto:
    """MODEL rewritten for TVM's importer: function ops expanded (all of them with EXPAND_EVERYTHING), Kiln's
    rewrites applied, shapes inferred and shape computations folded."""
    # ops TVM lacks that ONNX defines by a function body: functions.py
    model = expand_functions(model, supported_op_types(), everything=expand_everything)
    rewrite_model(model)  # ops TVM's importer lacks, cannot build or gets wrong, as other ONNX ops: op_rewrites.py
    try:
        # onnx's data propagation can build a 2**31-entry shape, folding a huge constant: containment.py
        with bounded_memory(inference_budget(model)):
            model = onnx.shape_inference.infer_shapes(model, data_prop=True)
            model = fold_shape_computations(model)  # exporters' run-time shape arithmetic, where shapes are known
            if unroll_control_flow(model):  # Loop / Scan with trip counts known now: control_flow.py
                model = fold_shape_computations(onnx.shape_inference.infer_shapes(model, data_prop=True))
            if rebuild_symbolic_shapes(model):  # what stays symbolic, from the inputs' named dims: symbolic_shapes.py
                model = onnx.shape_inference.infer_shapes(model, data_prop=True)
        return model
    except MemoryError:
        raise KilnError(f"{path}: ONNX shape inference ran out of memory: the model computes a tensor too large for "
                        "this machine from its constants (a ConstantOfShape, Expand or Tile of a huge size?)",
                        "fix the constant that sets the size, or re-export the model") from None
    except Exception as err:  # inference raises C++ errors of several kinds
        raise KilnError(f"{path}: ONNX shape inference failed ({str(err).splitlines()[0]})",
                        "fix the model, or give static shapes with --input-shape") from None


def expanded(loaded: LoadedModel) -> LoadedModel | None:
    """LOADED with every op that has an ONNX function body expanded into it, TVM's converter or not: the second
    try when a converter or a pass fails on the model. None when no op has a body (nothing would change)."""
    if not any(has_function_body(n, loaded.opset) for n in loaded.proto.graph.node):
        return None
    model = onnx.ModelProto()
    model.CopyFrom(loaded.proto)
    model = _prepare(model, loaded.path, expand_everything=True)
    if len(model.graph.node) == len(loaded.proto.graph.node) and \
            [n.op_type for n in model.graph.node] == [n.op_type for n in loaded.proto.graph.node]:
        return None
    return LoadedModel(model, loaded.path, loaded.sha256, loaded.inputs, loaded.opset, loaded.bound, loaded.narrow)


def supported_op_types() -> set[str]:
    """ONNX op types (default domain) that TVM's Relax importer converts."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map  # noqa: PLC0415 - heavy import

    return set(_get_convert_map()) | {"Constant", "If"}


def unsupported_ops(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """{op type: (count, first node name)} for every node, subgraphs included, that Kiln cannot import."""
    supported = supported_op_types()
    found: dict[str, tuple[int, str]] = {}
    counts: Counter = Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for index, node in enumerate(graph.node):
            key = node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
            known = node.domain in DEFAULT_DOMAINS or (node.domain, node.op_type) in CONTRIB_OPS
            if not known or node.op_type not in supported:
                counts[key] += 1
                found.setdefault(key, (0, node.name or f"#{index} ({node.op_type})"))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(model.graph)
    return {op: (counts[op], first) for op, (_, first) in found.items()}


def check_supported(loaded: LoadedModel) -> None:
    """Raise one KilnError that lists every unsupported op type with its count and first node."""
    missing = unsupported_ops(loaded.proto)
    if missing:
        listed = "; ".join(f"{op} x{count} (first: {node})" for op, (count, node) in sorted(missing.items()))
        raise KilnError(f"{loaded.path.name} uses {len(missing)} unsupported operator type(s): {listed}",
                        "replace them in the exporter, or file an issue naming these ops")


def import_relax(loaded: LoadedModel):
    """Convert LOADED into a Relax IRModule whose `main` takes the model's inputs in order."""
    from tvm.relax.frontend.onnx import from_onnx  # noqa: PLC0415 - heavy import

    check_supported(loaded)
    defaulted = defaulted_operands(loaded.proto)
    if defaulted:  # TVM's converter would put a default in their place: a wrong answer, not an error
        raise KilnError(f"{loaded.path.name}: {', '.join(defaulted)} must be known at compile time",
                        bind_hint(loaded.proto) or "make them constants (initializers) in the model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer warns about renames and the checker; both are handled
        try:
            # TVM's importer prints the failing node's inputs to stdout before raising: the error says it in one line
            with kiln_converters(), contextlib.redirect_stdout(io.StringIO()):  # Kiln's own for a few ops
                mod = from_onnx(loaded.proto, keep_params_in_input=False)
            return _outputs_as_tensors(resolve_shape_values(mod))  # run-time dims: shape_values.py
        except KilnError:
            raise
        except Exception as err:  # the importer raises many error types; one line names the failing op
            raise KilnError(f"{loaded.path.name}: import into TVM failed: {error_line(err)}",
                            bind_hint(loaded.proto) or "run with --debug for the full trace") from err


def _outputs_as_tensors(mod):
    """MOD with each output that TVM's importer made a shape value (a Shape of a static tensor) or a scalar value
    (a Squeeze of one) returned as a tensor, which is what the model's output is."""
    from tvm import relax  # noqa: PLC0415

    func = mod["main"]
    out = func.body.body
    several = isinstance(out.ty, relax.TupleType)
    types = list(out.ty.fields) if several else [out.ty]
    if all(isinstance(t, relax.TensorType) for t in types):
        return mod
    bound = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    value = bound.get(out, out)
    # Each output is read from OUT, never from the tuple's fields: those may be variables of the dataflow block,
    # which cannot be used after it (a constant output beside a computed one left the computed one undefined).
    # The fields' values only say what the output is (a scalar known at compile time, say).
    fields = [relax.TupleGetItem(out, i) for i in range(len(types))] if several else [out]
    values = [value.fields[i] if isinstance(value, relax.Tuple) else f for i, f in enumerate(fields)] \
        if several else [value]
    fields = [_as_tensor(f, bound.get(v, v), t, i) for i, (f, v, t) in enumerate(zip(fields, values, types))]
    body = relax.SeqExpr(func.body.blocks, relax.Tuple(fields) if several else fields[0])
    mod["main"] = relax.Function(func.params, relax.BlockBuilder().normalize(body), attrs=func.attrs)
    return relax.transform.Normalize()(mod)


def _as_tensor(expr, value, ty, index: int):
    """EXPR (of type TY, output INDEX, bound to VALUE) as a tensor: shapes through shape_to_tensor, scalar values
    as 0-d tensors."""
    from tvm import relax, tirx  # noqa: PLC0415

    if isinstance(ty, relax.TensorType):
        return expr
    if isinstance(ty, relax.ShapeType):
        return relax.op.shape_to_tensor(expr)
    if isinstance(value, (tirx.IntImm, tirx.FloatImm)):  # a scalar value TVM knows at compile time
        return relax.const(np.array(value.value, dtype=str(ty.dtype)))
    if str(getattr(ty, "dtype", "")) == "int64":  # a run-time one, through a 1-element shape
        with contextlib.suppress(Exception):
            return relax.op.reshape(relax.op.shape_to_tensor(relax.ShapeExpr([value])), [])
    raise KilnError(f"output {index} of the model is a {type(ty).__name__} value ({ty}) that Kiln cannot return "
                    "as a tensor", "report the model; making the output a tensor op (e.g. Identity of a "
                                   "tensor) works around it")


def error_line(err: Exception) -> str:
    """The line of a TVM error that says what went wrong (its messages end with IR dumps)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    said = next((line for line in lines if "Error" in line or "error" in line), lines[0] if lines else "")
    return (said or type(err).__name__)[:300]
