"""Writes that survive interruption: a temporary file in the same folder, then an atomic rename."""

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .scratch import fresh_name, sweep


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
    tmp = fresh_name(final.parent, f".{final.name}.", ".tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # the writer may have made it 0600; give the mode any new file would get
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write DATA to PATH atomically and return PATH."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)
