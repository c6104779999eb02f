"""runtime.Model: run and __call__, inputs read in place or copied, bad inputs named, several outputs."""

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import runtime
from runtime.errors import KilnError
from tests.models import F32, assert_matches_onnxruntime, finish, save


def test_run_and_call_agree(artifact):
    model = runtime.load(artifact, threads=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    by_name = model.run({"x": x})["y"]
    assert by_name.shape == (2, 48, 8, 8)
    np.testing.assert_array_equal(model(x), by_name)
    assert [s.name for s in model.inputs] == ["x"] and [s.name for s in model.outputs] == ["y"]


def test_copied_inputs_go_through_one_reused_tensor_per_input_and_results_stay_right(artifact):
    """An input the kernels cannot read in place (here: read-only, which DLPack cannot flag) is copied into a device
    tensor kept while the shape stays (a fresh one per call cost 5% on MobileNetV2); new values and a new batch
    size must still give each call its own result."""
    model = runtime.load(artifact, threads=1)
    rng = np.random.default_rng(5)
    inputs = [rng.standard_normal((b, 3, 8, 8)).astype(np.float32) for b in (2, 2, 3, 2)]
    for x in inputs:
        x.flags.writeable = False
    outputs = [model(x) for x in inputs]
    staged = model._staging[0]
    model(inputs[0])
    assert model._staging[0] is staged  # same shape: the same tensor again
    assert not np.array_equal(outputs[0], outputs[1])
    fresh = runtime.load(artifact, threads=1)
    for x, y in zip(inputs, outputs):
        np.testing.assert_array_equal(fresh(x), y)  # each call computed on its own input, not a stale copy
    np.testing.assert_array_equal(fresh(inputs[0].copy()), outputs[0])  # and read in place, the same result


def _at_offset(x: np.ndarray, offset: int) -> np.ndarray:
    """A copy of X whose data starts OFFSET bytes past a 64-byte boundary."""
    raw = np.empty(x.nbytes + 128, np.uint8)
    start = -raw.ctypes.data % 64 + offset
    view = raw[start:start + x.nbytes].view(x.dtype).reshape(x.shape)
    view[...] = x
    return view


def _square_plus_model(tmp_path, extra_output: bool = False) -> Path:
    """y = relu(x * x + c) on a 4x1024 x (LLVM keeps x in a register: an aligned load unless told otherwise);
    EXTRA_OUTPUT adds z = reshape(x), an output that is a view of the input."""
    c = helper.make_tensor("c", F32, [1024], np.linspace(-1, 1, 1024, dtype=np.float32))
    nodes = [helper.make_node("Mul", ["x", "x"], ["s"]), helper.make_node("Add", ["s", "c"], ["t"]),
             helper.make_node("Relu", ["t"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", F32, [4, 1024])]
    inits = [c]
    if extra_output:
        shape = helper.make_tensor("shape", helper.TensorProto.INT64, [2], [8, 512])
        nodes.append(helper.make_node("Reshape", ["x", "shape"], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", F32, [8, 512]))
        inits.append(shape)
    graph = helper.make_graph(nodes, "square_plus", [helper.make_tensor_value_info("x", F32, [4, 1024])], outputs,
                              inits)
    return save(finish(graph), tmp_path)


def test_inputs_are_read_where_the_caller_keeps_them(tmp_path):
    """kiln.ReadInputsInPlace declares the buffers through which kernels read a model input aligned to their
    element size, so the runtime hands the kernels the caller's array, even 4 bytes past a 64-byte boundary.
    (Without the pass LLVM loads x with vmovaps, which faults on such an address.)"""
    path = _square_plus_model(tmp_path)
    built = compiler.compile(path, output=tmp_path / "sq.so")
    assert built.manifest.input_alignment == 4 and "kiln.ReadInputsInPlace" in built.manifest.passes
    model = runtime.load(built.path)
    x = _at_offset(np.random.default_rng(6).standard_normal((4, 1024)).astype(np.float32), 4)
    assert x.ctypes.data % 64 == 4
    assert_matches_onnxruntime(path, model, {"x": x})
    assert not model._staging  # nothing was copied


def test_inputs_with_strides_the_kernels_refuse_are_copied(artifact):
    """numpy calls a transposed column C-contiguous (strides (4, 4) for shape 1x3) and gives an empty array zero
    strides; TVM's kernels check an argument's strides against the compact ones, so such inputs are copied."""
    model = runtime.load(artifact, threads=1)
    x = np.random.default_rng(8).standard_normal((3 * 8 * 8, 1)).astype(np.float32).T.reshape(1, 3, 8, 8)
    odd = np.lib.stride_tricks.as_strided(x, strides=(4,) + x.strides[1:])
    assert odd.flags.c_contiguous and odd.strides != x.strides
    np.testing.assert_array_equal(model(odd), model(x.copy()))
    assert model(np.zeros((0, 3, 8, 8), np.float32)).shape == (0, 48, 8, 8)


def test_an_input_that_is_also_an_output_is_copied(tmp_path):
    """A view of the input returned as an output would hand the caller's memory back: the pass leaves the
    kernels 64-byte aligned and the runtime copies the input."""
    path = _square_plus_model(tmp_path, extra_output=True)
    built = compiler.compile(path, output=tmp_path / "sqz.so")
    assert built.manifest.input_alignment == 64
    model = runtime.load(built.path)
    x = _at_offset(np.random.default_rng(7).standard_normal((4, 1024)).astype(np.float32), 4)
    out = assert_matches_onnxruntime(path, model, {"x": x})
    assert model._staging and not np.shares_memory(out["z"], x)


def test_outputs_the_call_made_are_handed_out_without_a_copy(tmp_path):
    """kiln.MarkFreshOutputs lists y (a kernel's result) as fresh: the caller gets a numpy array over the VM's
    tensor (a copy into a freshly mapped array cost more than small kernels). Each call's array stays its own:
    a later call does not write into it, and writing into it changes no later result."""
    path = _square_plus_model(tmp_path)
    built = compiler.compile(path, output=tmp_path / "sq.so")
    assert built.manifest.fresh_outputs == [True]
    model = runtime.load(built.path)
    rng = np.random.default_rng(9)
    x1, x2 = (rng.standard_normal((4, 1024)).astype(np.float32) for _ in range(2))
    y1 = model(x1)
    expected1 = y1.copy()
    y2 = model(x2)
    assert y1.flags.writeable and not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, expected1)  # the second call wrote elsewhere
    y1[...] = -1
    np.testing.assert_array_equal(model(x2), y2)
    assert_matches_onnxruntime(path, model, {"x": x1})


def test_outputs_that_are_inputs_constants_or_repeats_are_copied(tmp_path):
    """An output that is a view of an input, a constant of the model, or a second name for another output's
    tensor is not fresh: handing out the VM's memory would let the caller write into the model (or one output
    into another)."""
    path = _square_plus_model(tmp_path, extra_output=True)
    assert compiler.compile(path, output=tmp_path / "sqz.so").manifest.fresh_outputs == [True, False]

    c = np.linspace(-1, 1, 16, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "c"], ["y"]), helper.make_node("Identity", ["y"], ["y_again"]),
         helper.make_node("Identity", ["c"], ["k"])], "outputs",
        [helper.make_tensor_value_info("x", F32, [16])],
        [helper.make_tensor_value_info(name, F32, [16]) for name in ("y", "y_again", "k")],
        [numpy_helper.from_array(c, "c")])
    path = save(finish(graph), tmp_path, "outputs")
    built = compiler.compile(path, output=tmp_path / "outputs.so")
    assert built.manifest.fresh_outputs == [True, False, False]
    model = runtime.load(built.path)
    out = model.run({"x": np.ones(16, np.float32)})
    assert not np.shares_memory(out["y"], out["y_again"])
    out["k"][...] = 7
    out["y_again"][...] = 7
    again = model.run({"x": np.ones(16, np.float32)})
    np.testing.assert_array_equal(again["k"], c)
    np.testing.assert_array_equal(again["y"], c + 1)


@pytest.mark.parametrize("feeds, expected", [
    ({"x": np.zeros((1, 3, 8, 9), np.float32)}, "input 'x' has shape 1x3x8x9, expected batchx3x8x8"),
    ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "input 'x' has dtype float64, expected float32"),
    ({"z": np.zeros((1, 3, 8, 8), np.float32)}, "missing ['x'], unknown ['z']"),
])
def test_bad_inputs_name_what_is_expected(artifact, feeds, expected):
    model = runtime.load(artifact)
    with pytest.raises(KilnError) as info:
        model.run(feeds)
    assert expected in str(info.value)
    assert "x: float32[batchx3x8x8]" in str(info.value) or "expected" in str(info.value)


def test_wrong_number_of_positional_inputs(artifact):
    with pytest.raises(KilnError, match="takes 1 input"):
        runtime.load(artifact)()


def test_multiple_outputs(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", F32, [2, 5])],
                              [helper.make_tensor_value_info("a", F32, [2, 5]),
                               helper.make_tensor_value_info("b", F32, [2, 5])])
    path = save(finish(graph), tmp_path)
    model = runtime.load(compiler.compile(path, output=tmp_path / "two.so").path)
    out = assert_matches_onnxruntime(path, model)
    assert list(out) == ["a", "b"]
    a, b = model(np.ones((2, 5), np.float32))
    assert a.shape == b.shape == (2, 5)


def test_run_with_a_list_says_how_to_call_it(artifact):
    model = runtime.load(artifact)
    with pytest.raises(KilnError, match=r"run\(\) takes a dict of input name -> array, got a list \(pass \{'x': "
                                        r"array\}, or call the model with the arrays in order: model\(\*arrays\)\)"):
        model.run([np.zeros((1, 3, 8, 8), np.float32)])


def test_an_allocation_past_the_address_space_is_a_one_line_error(tmp_path):
    # Expand of a bool to 2^24 x 2^24 (256 TB, more than x86-64's 128 TB of user address space: it fails on any
    # machine): TVM's std::bad_alloc becomes a KilnError that says out of memory
    graph = helper.make_graph([helper.make_node("Expand", ["x", "shape"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.BOOL, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.BOOL, [2**24, 2**24])],
                              [numpy_helper.from_array(np.array([2**24, 2**24], np.int64), "shape")])
    model = runtime.load(compiler.compile(save(finish(graph), tmp_path), output=tmp_path / "m.so").path)
    with pytest.raises(KilnError, match="running the model failed: out of memory"):
        model.run({"x": np.ones((1, 1), bool)})


def test_kernel_times_inside_whole_runs_cover_every_kernel_and_leave_the_model_as_it_was(artifact):
    """time_in_runs hooks the VM around each call for a few runs: every kernel the manifest lists gets a time,
    the times add up to no more than the runs took, and afterwards the model runs unhooked with the same result."""
    import time  # noqa: PLC0415

    from runtime.profile import time_in_runs  # noqa: PLC0415

    model = runtime.load(artifact, threads=1)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    before = model.run(feeds)["y"]
    started = time.perf_counter()
    times = time_in_runs(model, feeds, runs=3)
    wall_ms = (time.perf_counter() - started) * 1e3 / 3  # one warm-up run more than the three timed
    # every kernel the manifest lists, and the host's shape function of the dynamic batch
    assert set(times) == {call["kernel"] for call in model.manifest.kernels["calls"]} | {"shape_func"}
    assert all(ms > 0 for ms in times.values()) and sum(times.values()) < wall_ms
    np.testing.assert_array_equal(model.run(feeds)["y"], before)
