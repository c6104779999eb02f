"""The artifact: one shared library with its manifest appended as a trailer, so the two cannot drift apart.

Layout of NAME.so: [library bytes][manifest JSON][32-byte seal][8-byte little-endian JSON length][MAGIC].
The dynamic loader reads only the library part; `library_sha256` in the manifest covers exactly that part, and
the seal is the sha256 of library and manifest together, so an edit of the manifest (renamed inputs, other
shapes) is refused at load as a damaged library is. Artifacts of format 1 (magic KILNMF01, no seal) are read by
`read_manifest` but refused by `verify`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_path
from .errors import KilnError

MAGIC = b"KILNMF02"
UNSEALED_MAGIC = b"KILNMF01"  # format 1: no seal
FORMAT_VERSION = 2
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
    bound_inputs: dict = field(default_factory=dict)  # model inputs fixed at compile time: {name: dtype, shape, value}
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


def write_artifact(library: Path, manifest: Manifest, out: Path) -> Path:
    """Append MANIFEST (with the library's sha256 filled in) to LIBRARY and write the result atomically to OUT."""
    lib_bytes = Path(library).read_bytes()
    manifest.library_sha256 = hashlib.sha256(lib_bytes).hexdigest()
    meta = manifest.to_json().encode()
    seal = hashlib.sha256(lib_bytes + meta).digest()
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(lib_bytes)
            f.write(meta)
            f.write(_TRAILER.pack(seal, len(meta), MAGIC))
    return Path(out)


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
    library_size = size - trailer - length
    f.seek(library_size)
    text = f.read(length)
    try:
        return _Tail(library_size, Manifest.from_json(text.decode()), text, seal)
    except (ValueError, TypeError, KeyError) as err:
        raise KilnError(f"{path} has a damaged manifest ({err})", "rebuild it with `kiln compile`") from None


def split_artifact(path: Path) -> tuple[bytes, Manifest]:
    """(library bytes, manifest) of the artifact at PATH."""
    with _open(Path(path)) as f:
        tail = _read_tail(f, Path(path))
        f.seek(0)
        return f.read(tail.library_size), tail.manifest


def _library_facts(f, library_size: int, copy_to=None):
    """(running sha256, first 64 bytes) of the library part of the artifact open as F, hashed in chunks (no copy
    of the library in memory); each chunk is also written to COPY_TO when given, so the copy is exactly what was
    hashed."""
    digest = hashlib.sha256()
    f.seek(0)
    head = f.read(min(64, library_size))
    chunk, left = head, library_size
    while chunk:
        digest.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
        left -= len(chunk)
        chunk = f.read(min(1 << 20, left)) if left > 0 else b""
    return digest, head


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


def verify(path: str | Path, copy_to=None) -> Manifest:
    """Check that the artifact at PATH is intact and runs on this machine; return its manifest.

    With COPY_TO (a binary file open for writing) the library part is written there as it is hashed: manifest,
    hash and copy all come from one open file, so a rewrite of PATH meanwhile fails the check instead of
    slipping a different library past it."""
    path = Path(path)
    with _open(path) as f:
        tail = _read_tail(f, path)
        manifest = tail.manifest
        if not isinstance(manifest.format_version, int) or manifest.format_version > FORMAT_VERSION:
            raise KilnError(f"{path} has artifact format {manifest.format_version}; this Kiln runtime reads format "
                            f"{FORMAT_VERSION} and older", "upgrade Kiln, or rebuild the artifact with this version")
        if tail.seal is None:
            raise KilnError(f"{path} has artifact format 1, whose manifest is not sealed to its library",
                            "rebuild it with `kiln compile` (this Kiln writes format 2)")
        digest, library = _library_facts(f, tail.library_size, copy_to)
    if digest.hexdigest() != manifest.library_sha256:
        raise KilnError(
            f"{path}: the library does not match the sha256 recorded in its manifest (damaged or altered)",
            "rebuild it with `kiln compile`",
        )
    digest.update(tail.text)
    if digest.digest() != tail.seal:
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
