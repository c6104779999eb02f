"""Writes are atomic: an interrupted write leaves the old file (or none) and no temporary file behind; what a
killed process left is removed by the next one."""

import os
import subprocess
import sys
import tempfile

import pytest

from runtime.atomic import atomic_path, atomic_write
from runtime.scratch import scratch_dir


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.so"
    atomic_write(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half-writ")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.so"]


def test_interrupted_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "sub" / "results.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError("killed")
    assert list((tmp_path / "sub").iterdir()) == []


def test_atomic_write_creates_folders_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "RESULTS.md"
    atomic_write(target, "one")
    atomic_write(target, "two")
    assert target.read_text() == "two"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_what_a_killed_process_left_is_removed_by_the_next_one(tmp_path, monkeypatch):
    """SIGKILL runs no cleanup: the next write of the same file, or the next scratch folder of the same kind,
    removes what a dead process left, and nothing of a process still running."""
    dead, alive = _dead_pid(), os.getppid()
    target = tmp_path / "model.so"
    stale = [tmp_path / f".model.so.{dead}-x1.tmp", tmp_path / f".model.so.{dead}-x2.tmp"]
    kept = [tmp_path / f".model.so.{alive}-x3.tmp", tmp_path / ".model.so.x4.tmp", tmp_path / f".other.so.{dead}-x.tmp"]
    for path in stale + kept:
        path.write_bytes(b"half")
    atomic_write(target, b"new")
    assert sorted(tmp_path.iterdir()) == sorted(kept + [target])

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    (tmp_path / f"kiln-build-{dead}-abc").mkdir()
    (tmp_path / f"kiln-build-{dead}-abc" / "lib.so").write_bytes(b"x")
    (tmp_path / f"kiln-build-{alive}-def").mkdir()
    with scratch_dir("kiln-build-") as folder:
        assert folder.name.startswith(f"kiln-build-{os.getpid()}-") and folder.stat().st_mode & 0o777 == 0o700
        assert not (tmp_path / f"kiln-build-{dead}-abc").exists() and (tmp_path / f"kiln-build-{alive}-def").exists()
    assert not folder.exists()


def _signal_right_after(create):
    """CREATE, then a SIGTERM's SystemExit the moment it returns: the earliest a handler can run."""
    def created_then_signalled(*args, **kwargs):
        create(*args, **kwargs)
        raise SystemExit(143)
    return created_then_signalled


def test_a_signal_right_after_the_scratch_folder_is_made_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "mkdir", _signal_right_after(os.mkdir))
    with pytest.raises(SystemExit):
        with scratch_dir("kiln-test-"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_a_signal_right_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "open", _signal_right_after(os.open))
    with pytest.raises(SystemExit):
        with atomic_path(tmp_path / "model.so"):
            pass
    assert list(tmp_path.iterdir()) == []
