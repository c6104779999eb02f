"""Writes are atomic: an interrupted write leaves the old file (or none) and no temporary file behind."""

import pytest

from runtime.atomic import atomic_path, atomic_write


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
