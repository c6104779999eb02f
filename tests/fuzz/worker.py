"""A fuzz worker (`python -m tests.fuzz.worker KIND`): reads case numbers (one per line) and answers one JSON line
per case. KIND 'fuzz' compiles protobuf and byte mutations of three small models (tests/fuzz/mutate.py) and runs
what compiles; KIND 'structured' compiles a mutated window of a corpus model (tests/fuzz/structured.py), runs it
on the window's feeds and compares with ONNX Runtime's outputs on the same model.

Outcomes: ok (compiled, ran, and matched ONNX Runtime where it runs the model too), refused (a KilnError: the
one-line error users see), mismatch (ran, outputs differ from ONNX Runtime's and from onnx's reference evaluator:
a wrong answer, a finding), ort_differs (Kiln matches onnx's reference evaluator where ONNX Runtime does not: not
a finding, counted apart) and internal (any other exception: the CLI shows it as 'internal error', a finding). A structured case also says
whether it reached TVM's importer and whether ONNX Runtime runs the model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tests.conformance.run import worker_answers

MATCH_OF_RANGE = 1e-3  # as the corpus: within this fraction of the reference output's range
OF_LARGEST = 1e-4  # or within this fraction of its largest value (an output of one value has no range)
# or within this much: a sum that cancels to about 0 (a layer norm's output dotted with its weight of ones) keeps
# the rounding error of its terms, 64 terms of order 1 in fp32 about 4e-6
ABSOLUTE = 1e-5


def differs(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray], values: bool = True) -> str | None:
    """Why OURS is not REFERENCE (by output name): a missing output, another shape or dtype kind, and (with
    VALUES) an infinity ONNX Runtime has and we do not, NaN or infinity where ONNX Runtime's value is finite,
    integers not equal, floats off by more than MATCH_OF_RANGE of the range and OF_LARGEST of the largest value
    (an output of one value, or one whose range is tiny beside its values) and ABSOLUTE; None when they agree. Where ONNX Runtime has NaN any value is accepted: how
    NaN passes through max and min (Relu, Clip, MaxPool) is not defined by ONNX, and TVM's max(x, 0) turns it
    into 0 where ONNX Runtime keeps it. Without VALUES (a model whose weights or inputs hold NaN or infinity,
    where inf * 0 in a convolution's padding or inf - inf in a sum depends on the order of the arithmetic) only
    names, shapes and dtypes are compared."""
    for name, want in reference.items():
        got = ours.get(name)
        if got is None:
            return f"output {name} missing"
        got, want = np.asarray(got), np.asarray(want)
        if got.shape != want.shape:
            return f"output {name}: shape {list(got.shape)}, ONNX Runtime {list(want.shape)}"
        if want.dtype.kind in "fc" and got.dtype.kind not in "fc":
            return f"output {name}: dtype {got.dtype}, ONNX Runtime {want.dtype}"
        if not values:
            continue
        if want.dtype.kind in "fc":
            g, w = got.astype(np.float64), want.astype(np.float64)
            finite = np.isfinite(w)
            if not np.array_equal(g[np.isinf(w)], w[np.isinf(w)]):
                return f"output {name}: infinity in other places"
            if not np.isfinite(g[finite]).all():
                return f"output {name}: NaN or infinity where ONNX Runtime has none"
            spread = float(w[finite].max() - w[finite].min()) if finite.any() else 0.0
            scale = float(np.abs(w[finite]).max()) if finite.any() else 0.0
            allowed = max(MATCH_OF_RANGE * spread, OF_LARGEST * scale, ABSOLUTE)
            error = float(np.abs(g[finite] - w[finite]).max(initial=0.0))
            if error > allowed:
                return f"output {name}: error {error / (spread or 1.0):.3g} of the range"
        elif not np.array_equal(got.astype(want.dtype), want):
            return f"output {name}: {int((got.astype(want.dtype) != want).sum())} element(s) differ"
    return None


def all_finite(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> bool:
    """Whether every float initializer, Constant and feed of the model is free of NaN and infinity."""
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    graph = onnx.load_from_string(model_bytes).graph
    tensors = list(graph.initializer) + [a.t for n in graph.node if n.op_type == "Constant" for a in n.attribute
                                         if a.name == "value"]
    arrays = [numpy_helper.to_array(t) for t in tensors] + list(feeds.values())
    return all(np.isfinite(a).all() for a in arrays if np.asarray(a).dtype.kind == "f")


def onnxruntime_outputs(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime's outputs of the model, by name."""
    from compiler.references import onnxruntime_session  # noqa: PLC0415

    session = onnxruntime_session(model_bytes, threads=1)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def reference_outputs(model_bytes: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The outputs of onnx's reference evaluator (the spec as code), by name; None where it cannot run the model.
    Asked only where Kiln and ONNX Runtime disagree: ONNX Runtime reads Slice's end of INT64_MAX as "to the
    start" for a negative step, where the spec clamps it to the last index (an empty slice)."""
    from onnx.reference import ReferenceEvaluator  # noqa: PLC0415

    try:
        evaluator = ReferenceEvaluator(model_bytes)
        return dict(zip(evaluator.output_names, evaluator.run(None, feeds)))
    except Exception:  # noqa: BLE001 - the reference has no kernel for every op (com.microsoft's)
        return None


def main() -> None:
    answer = worker_answers()  # before the heavy imports: anything they print goes to stderr
    kind = sys.argv[1] if len(sys.argv) > 1 else "fuzz"
    import onnxruntime  # noqa: PLC0415
    import tvm.relax.frontend.onnx as tvm_onnx  # noqa: PLC0415

    import compiler  # noqa: PLC0415
    import runtime  # noqa: PLC0415
    from compiler.frontend.containment import in_child  # noqa: PLC0415
    from runtime.bench import random_inputs  # noqa: PLC0415
    from runtime.errors import KilnError  # noqa: PLC0415
    from runtime.scratch import scratch_dir  # noqa: PLC0415
    from tests.fuzz.mutate import mutate, seed_models  # noqa: PLC0415
    from tests.fuzz.structured import structured_case  # noqa: PLC0415
    from tests.fuzz.windows import load_seed, seed_names  # noqa: PLC0415

    onnxruntime.set_default_logger_severity(3)
    reached = []
    importer = tvm_onnx.from_onnx

    def counted_import(*args, **kwargs):
        reached.append(True)
        return importer(*args, **kwargs)

    tvm_onnx.from_onnx = counted_import  # import_relax looks it up at each call: the count of cases that got there
    seeds = {name: load_seed(name) for name in seed_names()} if kind == "structured" else {}
    mutate_seeds = seed_models() if kind == "fuzz" else []
    answer({"ready": True})
    for line in sys.stdin:
        case = line.strip()
        reached.clear()
        reference, what = None, ""
        with scratch_dir("kiln-fuzz-") as tmp:
            path = Path(tmp) / "model.onnx"
            if kind == "structured":
                data, feeds, what = structured_case(int(case), seeds)
                try:  # in a child: ONNX Runtime too dies on some mutants (a ConstantOfShape of 2**31 values)
                    reference = in_child(lambda: onnxruntime_outputs(data, feeds), (2 << 30) + 8 * len(data))
                except Exception:  # noqa: BLE001 - ONNX Runtime refusing the model is an answer too
                    reference = None
            else:
                data, feeds = mutate(int(case), mutate_seeds), None
            path.write_bytes(data)
            try:
                artifact = compiler.compile(path, target="auto", output=Path(tmp) / "m.so", tuning_log="none")
                model = runtime.load(artifact.path, threads=1)
                inputs = {s.name: feeds[s.name] for s in model.inputs} if feeds is not None else \
                    random_inputs(model.inputs)
                ours = model.run(inputs)
                finite = reference is not None and all_finite(data, feeds)
                wrong = differs(ours, reference, finite) if reference is not None else None
                outcome, detail = ("mismatch", wrong) if wrong else ("ok", "")
                spec = reference_outputs(data, feeds) if wrong else None
                if spec is not None and not differs(ours, spec, finite):
                    outcome, detail = "ort_differs", wrong  # Kiln follows the spec where ONNX Runtime does not
            except KilnError as err:
                outcome, detail = "refused", str(err).replace(str(tmp), "TMP").splitlines()[0][:300]
            except Exception as err:  # noqa: BLE001 - recorded: the fuzzer's findings
                first = (str(err).strip().splitlines() or [""])[0]
                outcome, detail = "internal", f"{type(err).__name__}: {first.replace(str(tmp), 'TMP')[:300]}"
        answer({"name": case, "outcome": outcome, "detail": detail, "reached_tvm": bool(reached),
                "ort_runs": reference is not None, "case": what})


if __name__ == "__main__":
    main()
