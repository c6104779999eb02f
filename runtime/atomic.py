"""Writes that survive interruption: a temporary file in the same folder, then an atomic rename."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .scratch import stamped, sweep


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside PATH; on success it replaces PATH in one rename, on failure it is removed
    (and when the process is killed instead, the next write of PATH removes it)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sweep(final.parent, f".{final.name}.", ".tmp")
    fd, tmp = tempfile.mkstemp(prefix=stamped(f".{final.name}."), suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files 0600; give the mode any new file would get
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write DATA to PATH atomically and return PATH."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
