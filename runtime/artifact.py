"""The artifact: one shared library with its manifest appended as a trailer, so the two cannot drift apart.

Layout of NAME.so: [library bytes][weights][manifest JSON][32-byte seal][8-byte little-endian JSON length][MAGIC].
The dynamic loader reads only the library part; `library_sha256` in the manifest covers exactly that part. The
weights (format 3; see compiler/build/weights.py) start at a WEIGHTS_ALIGNMENT boundary (the library part is
padded with zeros up to it) so that the runtime can map them and hand the kernels their pages as they are;
`weights.sha256` covers them. The seal is the sha256 of library, weights and manifest together, so an edit of the
manifest (renamed inputs, other shapes) is refused at load as a damaged library is. Artifacts of format 2 (no
weights part) still load; those of format 1 (magic KILNMF01, no seal) are read by `read_manifest` but refused by
`verify`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .errors import KilnError
from .tvm_runtime import numpy_dtype

MAGIC = b"KILNMF02"
UNSEALED_MAGIC = b"KILNMF01"  # format 1: no seal
FORMAT_VERSION = 3
WEIGHTS_ALIGNMENT = 65536  # where the weights part starts: a page boundary for 4, 16 and 64 KiB pages
TENSOR_ALIGNMENT = 64  # of each weight within the part: what TVM's kernels assume of every buffer
_TRAILER = struct.Struct("<32sQ8s")  # seal, manifest length, magic
_UNSEALED_TRAILER = struct.Struct("<Q8s")
# ELF e_machine values of the architectures Kiln builds for, by the names platform.machine() reports.
ELF_MACHINES = {0x3E: "x86_64", 0xB7: "aarch64", 0x28: "armv7l"}


@dataclass
class TensorSpec:
    """Name, dtype and shape of one model input or output; symbolic dimensions are strings. An integer input
    that indexes a tensor (token ids) also has the range its values must keep to."""

    name: str
    dtype: str
    shape: list[int | str]
    valid_range: list[int] | None = None  # [lowest, highest] an integer input may hold (it indexes a tensor)

    def shape_text(self) -> str:
        return "x".join(str(d) for d in self.shape) or "scalar"


@dataclass
class Manifest:
    """Everything known about how an artifact was made; serialised as JSON inside the artifact."""

    source_model: str
    source_sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target: str
    tvm_target: dict
    arch: str
    cpu_features: list[str]
    passes: list[str]
    tuning: dict
    kernels: dict
    tvm_version: str
    kiln_version: str
    created: str
    quantization: dict | None = None
    library_sha256: str = ""
    format_version: int = FORMAT_VERSION
    compile_seconds: float = 0.0
    device: str = "cpu"  # where the kernels run: "cpu" or "cuda" (arch is then the host CPU's)
    input_alignment: int = 64  # bytes the kernels need of each input's address; the runtime copies one that is not
    # per output: a tensor the call made for itself, which the runtime hands out without a copy (older artifacts:
    # none listed, every output copied)
    fresh_outputs: list[bool] = field(default_factory=list)
    bound_inputs: dict = field(default_factory=dict)  # model inputs fixed at compile time: {name: dtype, shape, value}
    # the weights main takes after the inputs: {"offset", "bytes", "sha256", "tensors": [{dtype, shape, offset}]}
    # (offset: of the part in the file; a tensor's: within the part); empty when the library holds them all
    weights: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        for spec in data["inputs"] + data["outputs"]:
            if spec["valid_range"] is None:  # only index inputs have one: the others read as before
                del spec["valid_range"]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        data["inputs"] = [TensorSpec(**t) for t in data["inputs"]]
        data["outputs"] = [TensorSpec(**t) for t in data["outputs"]]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def write_artifact(library: Path, manifest: Manifest, out: Path, weights: list | None = None) -> Path:
    """Write LIBRARY, then WEIGHTS (numpy arrays, main's parameters after the inputs), then MANIFEST (its
    library and weights entries filled in) atomically to OUT."""
    lib_bytes = Path(library).read_bytes()
    if weights:
        lib_bytes += bytes(-len(lib_bytes) % WEIGHTS_ALIGNMENT)
    seal = hashlib.sha256(lib_bytes)  # goes on over the weights and the manifest
    manifest.library_sha256 = seal.hexdigest()
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(lib_bytes)
            manifest.weights = _write_weights(f, weights, seal) if weights else {}
            meta = manifest.to_json().encode()
            seal.update(meta)
            f.write(meta)
            f.write(_TRAILER.pack(seal.digest(), len(meta), MAGIC))
    return Path(out)


def _write_weights(f, weights: list, seal) -> dict:
    """Write WEIGHTS (each at a TENSOR_ALIGNMENT offset) to F at its position; SEAL takes the bytes too. Returns
    the manifest's `weights` entry."""
    start, digest, tensors, at = f.tell(), hashlib.sha256(), [], 0
    for array in weights:
        data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        padding = bytes(-at % TENSOR_ALIGNMENT)
        for chunk in (padding, data.data):
            f.write(chunk)
            digest.update(chunk)
            seal.update(chunk)
        at += len(padding)
        tensors.append({"dtype": str(array.dtype), "shape": list(array.shape), "offset": at})
        at += len(data)
    return {"offset": start, "bytes": at, "sha256": digest.hexdigest(), "tensors": tensors}


def _locate(path: Path) -> tuple[int, Manifest]:
    """(length of the library part, manifest) of the artifact at PATH, reading only its tail."""
    with _open(path) as f:
        tail = _read_tail(f, path)
        return tail.library_size, tail.manifest


@dataclass
class _Tail:
    library_size: int
    manifest: Manifest
    text: bytes  # the manifest as stored
    seal: bytes | None  # None in a format-1 artifact
    weights_size: int = 0  # bytes of the weights part, which follows the library part


def _open(path: Path):
    """PATH opened for reading; a KilnError naming what is there instead of an artifact otherwise."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise KilnError(f"artifact not found: {path}", "check the path, or build one with `kiln compile`") from None
    except IsADirectoryError:
        raise KilnError(f"{path} is a directory, not an artifact",
                        "pass the .so file written by `kiln compile`") from None


def _read_tail(f, path: Path) -> _Tail:
    """The manifest (and where the library ends) of the artifact open as F."""
    size = f.seek(0, 2)
    f.seek(max(0, size - _TRAILER.size))
    end = f.read()
    if end[-8:] == MAGIC and len(end) == _TRAILER.size:
        seal, length, _magic = _TRAILER.unpack(end)
    elif end[-8:] == UNSEALED_MAGIC and len(end) >= _UNSEALED_TRAILER.size:
        seal, (length, _magic) = None, _UNSEALED_TRAILER.unpack(end[-_UNSEALED_TRAILER.size:])
    elif size < _UNSEALED_TRAILER.size:
        raise KilnError(f"{path} is not a Kiln artifact (too short)", "build one with `kiln compile`")
    else:
        raise KilnError(f"{path} is not a Kiln artifact (no manifest)", "build one with `kiln compile`")
    trailer = _TRAILER.size if seal is not None else _UNSEALED_TRAILER.size
    if length > size - trailer:
        raise KilnError(f"{path} is not a Kiln artifact (no manifest)", "build one with `kiln compile`")
    body = size - trailer - length  # library and weights
    f.seek(body)
    text = f.read(length)
    try:
        manifest = Manifest.from_json(text.decode())
    except (ValueError, TypeError, KeyError) as err:
        raise KilnError(f"{path} has a damaged manifest ({err})", "rebuild it with `kiln compile`") from None
    weights_size = _weights_size(manifest.weights, body)
    if weights_size is None:
        raise KilnError(f"{path} has a damaged manifest (its weights entry does not fit the file)",
                        "rebuild it with `kiln compile`")
    return _Tail(body - weights_size, manifest, text, seal, weights_size)


def _weights_size(weights, body: int) -> int | None:
    """Bytes of the weights part the manifest's WEIGHTS entry describes in a file whose library and weights
    take BODY bytes (0 without weights); None when the entry cannot be right."""
    if not weights:
        return 0
    try:
        offset, size, tensors = weights["offset"], weights["bytes"], weights["tensors"]
        fits = all(isinstance(v, int) and not isinstance(v, bool) for v in (offset, size)) \
            and offset % WEIGHTS_ALIGNMENT == 0 and 0 < offset and offset + size == body
        for tensor in tensors:
            end = tensor["offset"] + _tensor_bytes(tensor)
            fits = fits and tensor["offset"] % TENSOR_ALIGNMENT == 0 and 0 <= tensor["offset"] <= end <= size
    except (KeyError, TypeError, ValueError):
        return None
    return size if fits else None


def _tensor_bytes(tensor: dict) -> int:
    """Bytes of one weight the manifest's weights entry lists (TypeError / ValueError when it is not one)."""
    count = 1
    for dim in tensor["shape"]:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 0:
            raise ValueError(f"dimension {dim!r}")
        count *= dim
    return count * weight_dtype(tensor["dtype"]).itemsize


def weight_dtype(name: str) -> np.dtype:
    """The numpy dtype a weight of TVM dtype NAME is stored as: its own, or unsigned codes of its width for one
    numpy lacks (bfloat16 as uint16, float8_e4m3fn as uint8)."""
    dtype = numpy_dtype(name) if isinstance(name, str) else None
    if dtype is not None:
        return dtype
    width = re.search(r"\d+", name) if isinstance(name, str) else None
    codes = {"8": np.uint8, "16": np.uint16, "32": np.uint32, "64": np.uint64}.get(width and width.group())
    if codes is None:
        raise ValueError(f"dtype {name!r}")
    return np.dtype(codes)


def split_artifact(path: Path) -> tuple[bytes, Manifest]:
    """(library bytes, manifest) of the artifact at PATH."""
    with _open(Path(path)) as f:
        tail = _read_tail(f, Path(path))
        f.seek(0)
        return f.read(tail.library_size), tail.manifest


def read_weights(path: Path) -> list[np.ndarray]:
    """The weights of the artifact at PATH (copies, in main's parameter order; none for format 2)."""
    with _open(Path(path)) as f:
        tail = _read_tail(f, Path(path))
        f.seek(tail.library_size)
        part = f.read(tail.weights_size)
    return weight_arrays(part, tail.manifest.weights)


def weight_arrays(part, weights: dict) -> list[np.ndarray]:
    """Views into PART (a buffer holding the weights part) of the weights the manifest's WEIGHTS entry lists."""
    arrays = []
    for tensor in weights.get("tensors", []) if weights else []:
        dtype = weight_dtype(tensor["dtype"])
        count = _tensor_bytes(tensor) // dtype.itemsize
        arrays.append(np.frombuffer(part, dtype, count, tensor["offset"]).reshape(tensor["shape"]))
    return arrays


def _hash_part(f, size: int, digests: list, copy_to=None) -> bytes:
    """Feed the next SIZE bytes of F to each of DIGESTS in 4 MiB chunks (no copy of the part in memory), writing
    each chunk to COPY_TO too when given, so that a copy is exactly what was hashed. Returns the first 64 bytes.
    The digests after the first take each chunk on a thread of their own while the first hashes it and the copy
    is written (hashlib lets go of the GIL): BERT-base's 340 MB of weights go to two digests, and loading it
    spent 0.45 s of 0.66 hashing one after the other (0.25 s so)."""
    head = f.read(min(64, size))
    chunk, left = head, size
    with ThreadPoolExecutor(max_workers=max(1, len(digests) - 1)) as helpers:
        while chunk:
            others = [helpers.submit(digest.update, chunk) for digest in digests[1:]]
            digests[0].update(chunk)
            if copy_to is not None:
                copy_to.write(chunk)
            for done in others:
                done.result()
            left -= len(chunk)
            chunk = f.read(min(4 << 20, left)) if left > 0 else b""
    return head


def read_manifest(path: str | Path) -> Manifest:
    """Return the manifest of the artifact at PATH without loading its library."""
    return _locate(Path(path))[1]


def host_cpu_features() -> set[str]:
    """CPU feature flags of this machine as /proc/cpuinfo names them (empty where unknown)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("flags", "features"):
            return set(line.split(":", 1)[1].split())
    return set()


def verify(path: str | Path, copy_to=None, weights_to=None) -> Manifest:
    """Check that the artifact at PATH is intact and runs on this machine; return its manifest.

    With COPY_TO (a binary file open for writing) the library part is written there as it is hashed, and with
    WEIGHTS_TO the weights part: manifest, hash and copy all come from one open file, so a rewrite of PATH
    meanwhile fails the check instead of slipping a different library past it."""
    path = Path(path)
    with _open(path) as f:
        tail = _read_tail(f, path)
        manifest = tail.manifest
        if not isinstance(manifest.format_version, int) or manifest.format_version > FORMAT_VERSION:
            raise KilnError(f"{path} has artifact format {manifest.format_version}; this Kiln runtime reads format "
                            f"{FORMAT_VERSION} and older", "upgrade Kiln, or rebuild the artifact with this version")
        if tail.seal is None:
            raise KilnError(f"{path} has artifact format 1, whose manifest is not sealed to its library",
                            "rebuild it with `kiln compile` (this Kiln writes format 3)")
        seal, weights_digest = hashlib.sha256(), hashlib.sha256()
        f.seek(0)
        library = _hash_part(f, tail.library_size, [seal], copy_to)
        library_sha256 = seal.hexdigest()  # the seal's digest goes on over the weights and the manifest
        _hash_part(f, tail.weights_size, [seal, weights_digest], weights_to)
    if library_sha256 != manifest.library_sha256:
        raise KilnError(
            f"{path}: the library does not match the sha256 recorded in its manifest (damaged or altered)",
            "rebuild it with `kiln compile`",
        )
    if manifest.weights and weights_digest.hexdigest() != manifest.weights.get("sha256"):
        raise KilnError(f"{path}: the weights do not match the sha256 recorded in its manifest (damaged or "
                        "altered)", "rebuild it with `kiln compile`")
    seal.update(tail.text)
    if seal.digest() != tail.seal:
        raise KilnError(f"{path}: the manifest does not match the seal written with it (edited after "
                        "`kiln compile`)", "rebuild it with `kiln compile`; edit the model, never the manifest")
    is_elf = library[:4] == b"\x7fELF" and len(library) >= 20
    elf_arch = ELF_MACHINES.get(struct.unpack_from("<H", library, 18)[0], "unknown") if is_elf else "unknown"
    host = platform.machine()
    if elf_arch != host:
        raise KilnError(
            f"{path} was built for {elf_arch} (target {manifest.target}), this host is {host}",
            f"run it on {elf_arch} hardware (`kiln bundle` packs it with a runtime), or compile for a target of "
            "this machine (see `kiln targets`)",
        )
    missing = sorted(set(manifest.cpu_features) - host_cpu_features())
    if missing and host_cpu_features():
        raise KilnError(
            f"{path} needs CPU features this machine lacks: {', '.join(missing)}",
            "compile for a target this CPU supports (`kiln targets` marks them)",
        )
    return manifest
