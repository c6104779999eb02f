"""Scratch files and folders that do not outlive their process: each name carries the pid of the process that
made it, so what a killed process left (SIGKILL runs no cleanup) is removed by the next one that looks.

Names: PREFIX<pid>-<random> (folders in the temp folder, files beside an output). Only entries of this user whose
process is gone are removed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def stamped(prefix: str, pid: int | None = None) -> str:
    """PREFIX with PID (default: this process's) appended: the prefix of a scratch name `sweep` can judge."""
    return f"{prefix}{os.getpid() if pid is None else pid}-"


def fresh_name(folder: str | os.PathLike, prefix: str, suffix: str = "") -> Path:
    """FOLDER/PREFIX<pid>-<random>SUFFIX, a name nothing else uses (64 random bits behind this process's pid).

    Callers create the entry inside the `try` whose `finally` removes it: a signal that arrives between the
    creation and the `try` (SIGTERM unwinds as SystemExit) would otherwise leave it behind."""
    return Path(folder, stamped(prefix) + secrets.token_hex(8) + suffix)


def sweep(folder: str | os.PathLike, prefix: str, suffix: str = "") -> list[Path]:
    """Remove the scratch entries PREFIX<pid>-*SUFFIX in FOLDER whose process no longer runs; returns them."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)-.*" + re.escape(suffix) + r"\Z", re.DOTALL)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        found = pattern.match(entry.name)
        if not found or _running(int(found.group(1))):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue  # another process swept it first, or it is not ours to remove
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a name that only looks like ours): leave it
    return True


@contextmanager
def scratch_dir(prefix: str = "kiln-") -> Iterator[Path]:
    """A fresh private folder (mode 0700) in the temp folder, removed when the block ends; folders of the same
    PREFIX left by dead processes are removed first."""
    root = tempfile.gettempdir()
    sweep(root, prefix)
    folder = fresh_name(root, prefix)
    try:
        os.mkdir(folder, 0o700)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
