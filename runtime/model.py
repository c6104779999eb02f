"""Load a Kiln artifact and run it: numpy in, numpy out."""

from __future__ import annotations

import functools
import mmap
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .artifact import TENSOR_ALIGNMENT, Manifest, TensorSpec, verify, weight_arrays
from .errors import KilnError
from .scratch import scratch_dir
from . import tvm_runtime as tvmrt
from .tvm_runtime import enable_amx, load_cuda_runtime, set_num_threads, wrap_array

_pool_threads = threading.local()  # the TVM pool size this thread configured (TVM's pool is per calling thread)
_KDL_CPU = 1
_KDL_CUDA = 2
_POOLED_ALLOCATOR = 2


class Model:
    """A loaded artifact. `run({name: array}) -> {name: array}`; `model(*arrays)` returns one array per output.

    Safe to call from several threads: calls run one at a time (each uses every worker thread of TVM's pool),
    and each calling thread gets a pool of the size given to `load`."""

    def __init__(self, path: Path, manifest: Manifest, library, vm, device=None, threads: int | None = None,
                 weights: list | None = None):
        self.path = path
        self.threads = threads
        self.manifest = manifest
        self.library = library
        self.device = device if device is not None else tvmrt.cpu()
        self._vm = vm
        self._main = vm["main"]
        self._lock = threading.Lock()
        self._staging: dict[int, object] = {}  # input index -> its reusable device tensor (see _staged)
        self._weights = weights or []  # main's parameters after the inputs (see compiler/build/weights.py)
        self._on_cpu = self.device.dlpack_device_type() == _KDL_CPU
        self._narrow_inputs = any(s.dtype in NARROW_DTYPES for s in manifest.inputs)

    @property
    def inputs(self) -> list[TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> list[TensorSpec]:
        return self.manifest.outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on FEEDS (every input by name) and return every output by name."""
        if not isinstance(feeds, Mapping):
            raise KilnError(f"run() takes a dict of input name -> array, got a {type(feeds).__name__}",
                            f"pass {{{', '.join(repr(s.name) + ': array' for s in self.inputs)}}}, or call the "
                            "model with the arrays in order: model(*arrays)")
        return self._execute(ordered_feeds(self.inputs, feeds, self.manifest.bound_inputs))

    def __call__(self, *arrays: np.ndarray):
        """Run on positional inputs in manifest order; one output comes back as an array, several as a tuple."""
        if len(arrays) != len(self.inputs):
            raise KilnError(
                f"the model takes {len(self.inputs)} input(s), got {len(arrays)}",
                f"pass {describe(self.inputs)}",
            )
        outputs = list(self._execute(list(arrays)).values())
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _execute(self, arrays: list) -> dict[str, np.ndarray]:
        _size_pool(self.threads)
        checked = check_inputs(self.inputs, arrays)
        if self._narrow_inputs:
            checked = [as_codes(a) if s.dtype in NARROW_DTYPES else a for s, a in zip(self.inputs, checked)]
        with self._lock:  # one VM runs one call at a time; each call already uses the whole worker pool
            try:
                result = self._main(*[self._device_input(i, a) for i, a in enumerate(checked)], *self._weights)
            except Exception as err:  # TVM's errors have no common base here; only allocation failures are named
                if "bad_alloc" in str(err) or "Failed to allocate" in str(err):
                    raise KilnError("running the model failed: out of memory (a tensor larger than this machine "
                                    "can hold: an Expand or ConstantOfShape to a huge shape, or inputs too big)",
                                    "run it on smaller inputs, or check the model's shapes") from err
                raise
            values = [result] if isinstance(result, tvmrt.runtime_ffi().Tensor) else list(result)
            return {spec.name: from_codes(array, spec.dtype) if spec.dtype in NARROW_DTYPES else array
                    for spec, array in zip(self.outputs, self._as_numpy(values))}

    def _as_numpy(self, values: list) -> list[np.ndarray]:
        """The output tensors VALUES as numpy arrays: over the tensor's own memory where the manifest lists it as
        fresh (made by this call: nothing else holds it) and it lies in the CPU's memory, else a copy."""
        fresh = self.manifest.fresh_outputs
        if len(fresh) != len(values) or not self._on_cpu:
            fresh = [False] * len(values)
        return [tvmrt.as_numpy(value) if own else tvmrt.to_numpy(value) for value, own in zip(values, fresh)]

    def _device_input(self, index: int, array: np.ndarray):
        """ARRAY as the VM takes input INDEX: the array itself (zero copy) on the CPU when its address has the
        alignment the kernels were compiled for (manifest `input_alignment`), else a copy (see _staged)."""
        if self._on_cpu and array.strides == _compact_strides(array.shape, array.itemsize):
            try:
                return wrap_array(array, self.manifest.input_alignment)
            except (BufferError, RuntimeError):  # read-only (DLPack cannot flag it) / short of the alignment
                pass
        return self._staged(index, array)

    def _staged(self, index: int, array: np.ndarray):
        """ARRAY copied into input INDEX's device tensor, which is kept from call to call while the shape stays
        (callers hold the lock). A fresh tensor per call made MobileNetV2 (a 600 KB image) 5% slower than a run
        on a tensor made once; copying into a kept one, 2.4% (interleaved blocks, 2 threads)."""
        tensor = self._staging.get(index)
        if tensor is None or tuple(tensor.shape) != array.shape or str(tensor.dtype) != str(array.dtype):
            tensor = self._staging[index] = tvmrt.empty(array.shape, str(array.dtype), self.device)
        tvmrt.copy_into(tensor, array)
        return tensor


def _numpy_dtype(name: str):
    """The numpy dtype of the TVM dtype NAME, or NAME itself where numpy has none (a cheap equality test)."""
    return tvmrt.numpy_dtype(name) or name


@functools.lru_cache(maxsize=256)
def _compact_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """The strides TVM's kernels check an argument of SHAPE against. numpy calls arrays C-contiguous whatever the
    strides of their size-1 axes (a transposed column: (4, 4) for shape 1x3), and gives an empty array zero
    strides."""
    strides, step = [], itemsize
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


# float8 / float4 / int4 / int2 dtypes (ml_dtypes' names): the kernels take and give them as uint8 codes, one per
# element, the bytes ml_dtypes stores them in (compiler/frontend/narrow_types.py)
NARROW_DTYPES = {"float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "float4_e2m1fn", "int4", "uint4",
                 "int2", "uint2"}


def as_codes(array: np.ndarray) -> np.ndarray:
    """An array of a NARROW_DTYPES dtype as the uint8 codes the kernels read (no copy)."""
    return array.view(np.uint8)


def from_codes(codes: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 CODES as the NARROW_DTYPES dtype they stand for (no copy)."""
    import ml_dtypes  # noqa: PLC0415 - only models with such outputs need it

    return codes.view(getattr(ml_dtypes, dtype))


def describe(specs: list[TensorSpec]) -> str:
    """'name: dtype[shape], ...' of SPECS, as error messages list what a model takes."""
    return ", ".join(f"{s.name}: {s.dtype}[{s.shape_text()}]" for s in specs)


def ordered_feeds(specs: list[TensorSpec], feeds: dict, bound: dict | None = None) -> list:
    """FEEDS (by name) in the order of SPECS; a KilnError naming the missing and unknown names otherwise. A feed
    for an input fixed at compile time (BOUND: the manifest's bound_inputs) is accepted when it holds that value
    and left out; any other value is an error."""
    feeds = _without_bound(feeds, bound or {})
    unknown = sorted(set(feeds) - {s.name for s in specs})
    missing = [s.name for s in specs if s.name not in feeds]
    if unknown or missing:
        raise KilnError(f"wrong inputs: missing {missing or 'none'}, unknown {unknown or 'none'}",
                        f"the model takes {describe(specs)}")
    return [feeds[s.name] for s in specs]


def _without_bound(feeds: dict, bound: dict) -> dict:
    fixed = set(feeds) & set(bound)
    for name in sorted(fixed):
        want = bound[name]
        given = np.asarray(feeds[name])
        if given.shape != tuple(want["shape"]) or not np.array_equal(given, np.array(want["value"], want["dtype"])):
            raise KilnError(f"input '{name}' was fixed to {want['value']} when the model was compiled "
                            f"(--input-value), got {given.tolist()}",
                            f"leave it out, or recompile with --input-value {name}=<the value you need>")
    return {k: v for k, v in feeds.items() if k not in fixed} if fixed else feeds


def check_inputs(specs: list[TensorSpec], arrays: list) -> list[np.ndarray]:
    """Return ARRAYS as contiguous numpy arrays after checking each dtype and shape against SPECS."""
    bound: dict[str, int] = {}
    checked = []
    for spec, value in zip(specs, arrays):
        array = np.asarray(value)
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)  # (it would also make a 0-d array 1-d: only when needed)
        if array.dtype != _numpy_dtype(spec.dtype) and str(array.dtype) != spec.dtype:
            raise KilnError(
                f"input '{spec.name}' has dtype {array.dtype}, expected {spec.dtype}",
                f"convert it, e.g. array.astype('{spec.dtype}')",
            )
        ok = array.ndim == len(spec.shape)
        for dim, size in zip(spec.shape, array.shape) if ok else ():
            if isinstance(dim, str):
                ok = bound.setdefault(dim, size) == size
            else:
                ok = dim == size
            if not ok:
                break
        if not ok:
            shape = "x".join(map(str, array.shape)) or "scalar"
            raise KilnError(
                f"input '{spec.name}' has shape {shape}, expected {spec.shape_text()}",
                "reshape the input, or recompile with --input-shape",
            )
        if spec.valid_range is not None and array.size:
            _check_range(spec, array)
        checked.append(array)
    return checked


def _check_range(spec: TensorSpec, array: np.ndarray) -> None:
    """Refuse values of ARRAY outside SPEC's valid_range (the axis an index input reads), naming the first."""
    low, high = spec.valid_range
    outside = (array < low) | (array > high)
    if outside.any():
        where = tuple(int(i) for i in np.argwhere(outside)[0])
        raise KilnError(f"input '{spec.name}' holds {array[where]} at {list(where)}, outside [{low}, {high}]: "
                        "the model indexes a tensor with it (a token id past the vocabulary?)",
                        f"pass values from {low} to {high}")


@contextmanager
def _private_copy(path: Path) -> Iterator[tuple[Path, BinaryIO, Manifest]]:
    """(library copy, weights copy, manifest): the library and weights parts of the artifact at PATH, verified as
    they are copied, the library into a folder made for this load alone (mode 0700, a scratch_dir, removed with
    the folder when the block ends), the weights into a memory file (_weights_file).

    The loader maps the copies, never PATH: a `cp` or truncation of a served file cannot pull pages from under
    running code (SIGBUS / SIGSEGV), and no file anyone else can write or predict is ever loaded. Removing the copy
    once it is loaded is safe: the mapping keeps the file's inode, so its number cannot be handed to another file
    that the loader (which also knows libraries by device and inode) would then mistake for this one."""
    with scratch_dir("kiln-load-") as folder:
        copy = folder / path.name
        with _private_file(copy) as library_out, _weights_file(folder) as weights_out:
            manifest = verify(path, copy_to=library_out, weights_to=weights_out)
            weights_out.flush()
            yield copy, weights_out, manifest


def _private_file(path: Path, readable: bool = False):
    """PATH created for writing (and reading back, READABLE) by this process alone (it must not exist: no link is
    followed)."""
    access, mode = (os.O_RDWR, "w+b") if readable else (os.O_WRONLY, "wb")
    return os.fdopen(os.open(path, access | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), mode)


def _weights_file(folder: Path) -> BinaryIO:
    """Where the weights part is copied at load: a memory file (memfd) where the OS has them, else a private
    file in FOLDER. A file on disk put the load behind the kernel's writeback of hundreds of MB of dirty pages:
    fresh processes started BERT-base in 1.81, 1.27, 1.46, 0.64, 0.63 s after a tune had written to the disk, and
    in 0.64-0.69 s each from a memory file, alternating (ViT-B/16: 0.57-1.56 s, and 0.59-0.60). Mapped, a memory
    file's pages count in the process's resident set only once a run touches them, as the disk file's did
    (embedding rows no run reads never count: peak RSS the same, 376 MB for BERT-base)."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("kiln-weights", os.MFD_CLOEXEC), "w+b")
    return _private_file(folder / "weights", readable=True)


def _map_weights(weights_file: BinaryIO, manifest: Manifest, device) -> list:
    """The weights main takes after the inputs, as TVM tensors: on the CPU over the pages of WEIGHTS_FILE mapped
    copy-on-write (the one copy a process holds; the kernels never write them), on a GPU copied there."""
    if not manifest.weights:
        return []
    pages = mmap.mmap(weights_file.fileno(), 0, access=mmap.ACCESS_COPY)
    on_cpu = device.dlpack_device_type() == _KDL_CPU
    tensors = []
    for spec, array in zip(manifest.weights["tensors"], weight_arrays(pages, manifest.weights)):
        tensor = wrap_array(array, TENSOR_ALIGNMENT) if on_cpu else tvmrt.to_device(array, device)
        if str(tensor.dtype) != spec["dtype"]:  # stored as codes of its width (bfloat16 as uint16)
            tensor = tvmrt.as_dtype(tensor, spec["dtype"])
        tensors.append(tensor)
    return tensors


def load(path: str | Path, threads: int | None = None) -> Model:
    """Verify the artifact at PATH (hash, architecture, CPU features) and load it for running on the CPU.

    THREADS sizes the process-wide worker pool (default: one thread per usable CPU).
    """
    path = Path(path)
    with _private_copy(path) as (copy, weights_copy, manifest):
        if "amx_tile" in manifest.cpu_features:
            enable_amx()
        device = _gpu(path, manifest) if manifest.device == "cuda" else tvmrt.cpu()
        _size_pool(threads)
        try:
            lib = tvmrt.load_module(str(copy))
            vm = lib["vm_load_executable"]()
            weights = _map_weights(weights_copy, manifest, device)
        except Exception as err:  # TVM raises its own error types; name them in one line
            reason = f"{type(err).__name__}: {err}".replace(str(copy), str(path)).splitlines()[0]
            raise KilnError(f"{path}: the library could not be loaded ({reason})",
                            "rebuild it with `kiln compile` for this machine") from None
    arity = int(vm["get_function_arity"]("main"))
    if arity != len(manifest.inputs) + len(weights):  # the manifest was edited, or belongs to another library
        raise KilnError(f"{path}: the manifest lists {len(manifest.inputs)} input(s) and {len(weights)} weight(s) "
                        f"but the library's main takes {arity}", "rebuild it with `kiln compile`")
    if manifest.device == "cuda":  # kernels on the GPU, shape computations on the host
        vm["vm_initialization"](_KDL_CUDA, 0, _POOLED_ALLOCATOR, _KDL_CPU, 0, _POOLED_ALLOCATOR)
    else:
        vm["vm_initialization"](_KDL_CPU, 0, _POOLED_ALLOCATOR)
    return Model(path, manifest, lib, vm, device, threads, weights)


def _size_pool(threads: int | None) -> None:
    """Size the calling thread's TVM worker pool to THREADS once. TVM keeps one pool per calling thread,
    configured by that thread: a thread that never configured it gets TVM's default (one worker here), so a model
    run from a server's worker thread ran 2x slower."""
    if getattr(_pool_threads, "size", "unset") != threads:
        set_num_threads(threads)
        _pool_threads.size = threads


def _gpu(path: Path, manifest: Manifest):
    """The CUDA device a CUDA artifact runs on; a KilnError when this machine has none."""
    arch = manifest.tvm_target.get("arch", "?")
    try:
        load_cuda_runtime()
    except KilnError as err:
        raise KilnError(f"{path} was built for CUDA {arch} (target {manifest.target}): {err.message}",
                        err.hint) from None
    gpu = tvmrt.cuda(0)
    if not tvmrt.device_exists(gpu):
        raise KilnError(f"{path} was built for CUDA {arch} (target {manifest.target}), this host has no CUDA GPU",
                        "run it on a machine with an NVIDIA GPU, or compile for a CPU target (see `kiln targets`)")
    return gpu
