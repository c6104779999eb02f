"""Tuning records in tuning_logs/TARGET/: one MetaSchedule JSON database per target (workloads + records), and
Kiln's notes beside it (kiln_tuning.json: the target and TVM version that wrote it, trials spent per task).
Open, repair after a kill, prune, check against a target, apply to a module."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import tvm
import tvm_ffi
from tvm import relax
from tvm.s_tir import meta_schedule as ms

from runtime.atomic import atomic_write
from runtime.errors import KilnError
from runtime.scratch import scratch_dir

from ..targets import TUNING_LOGS, TargetPreset

log = logging.getLogger(__name__)

WORKLOADS, RECORDS, NOTES = "database_workload.json", "database_tuning_record.json", "kiln_tuning.json"
# Target attributes that decide what code a record's schedule is right for; num-cores is a tuning setting.
_TARGET_KEYS = ("kind", "mtriple", "mcpu", "mattr", "arch")


LOCK = ".kiln_tune.lock"
# A complete set of new database files waiting to replace the current ones (see _replace_together); its
# staging folders are named PENDING + ".*" until they are complete.
PENDING = ".kiln_pending"


@contextmanager
def writer_lock(folder: Path) -> Iterator[None]:
    """Hold FOLDER's writer lock for a tune: two tunes appending to one database at once would interleave
    their lines. Fails at once, naming the holder, when another process has it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise KilnError(f"another kiln tune ({holder}) is writing {folder}",
                            "wait for it to finish, or tune into another folder with --log DIR") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def database_dir(target_name: str, root: Path | None = None) -> Path:
    """The folder that holds TARGET_NAME's database."""
    return (root or TUNING_LOGS) / target_name


def has_database(folder: Path) -> bool:
    """True when FOLDER holds a MetaSchedule JSON database."""
    return (folder / WORKLOADS).is_file() and (folder / RECORDS).is_file()


def repair(folder: Path) -> int:
    """Drop what a killed writer left half-written at the end of the database files (a line without its newline,
    or one that is not JSON); returns how many lines were dropped. Appends are single lines, so only the last
    line can be torn."""
    _finish_replacing(folder)
    dropped = 0
    for name in (WORKLOADS, RECORDS):
        path = folder / name
        if not path.is_file():
            continue
        text = path.read_text()
        lines = text.split("\n")
        complete, tail = lines[:-1], lines[-1]  # tail is "" when the file ends with a newline
        keep = []
        for line in complete:
            try:
                json.loads(line)
                keep.append(line)
            except ValueError:
                dropped += 1
        dropped += bool(tail.strip())
        if len(keep) != len(complete) or tail.strip():
            atomic_write(path, "".join(line + "\n" for line in keep))
    return dropped


def read_notes(folder: Path) -> dict:
    """Kiln's notes on the database in FOLDER ({} when there are none)."""
    path = folder / NOTES
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        log.warning("ignoring unreadable %s", path)
        return {}


def write_notes(folder: Path, notes: dict) -> None:
    """Replace Kiln's notes in FOLDER (atomically)."""
    atomic_write(folder / NOTES, json.dumps(notes, indent=1, sort_keys=True) + "\n")


def _target_identity(target: dict) -> dict:
    return {k: target[k] for k in _TARGET_KEYS if k in target}


def check_target(folder: Path, preset: TargetPreset) -> None:
    """Fail when the database in FOLDER was written for another target than PRESET: its schedules would apply
    (the kernels look the same) but were chosen for other hardware."""
    notes = read_notes(folder)
    written_for = notes.get("tvm_target")
    if written_for and _target_identity(written_for) != _target_identity(preset.tvm_target):
        raise KilnError(f"tuning log {folder} was written for target '{notes.get('target')}' "
                        f"({_target_identity(written_for)}), not '{preset.name}' "
                        f"({_target_identity(preset.tvm_target)})",
                        f"use --tuning-log {database_dir(preset.name)} or --tuning-log none")


def open_database(folder: Path, create: bool = False) -> ms.database.JSONDatabase | None:
    """The JSON database in FOLDER (repaired first), or None when FOLDER holds none and CREATE is False."""
    if not has_database(folder):
        if not create:
            return None
        folder.mkdir(parents=True, exist_ok=True)
    dropped = repair(folder)
    if dropped:
        log.warning("dropped %d half-written line(s) from %s (a tune was killed while writing)", dropped, folder)
    return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=create)


def workload_key(kernel: tvm.IRModule | tvm.tirx.PrimFunc) -> str:
    """The key the database files a kernel under: its structural hash, normalized as MetaSchedule does."""
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod  # noqa: PLC0415 - MetaSchedule's own rule

    return str(tvm_ffi.structural_hash(_normalize_mod(kernel)))


def kernel_keys(mod: tvm.IRModule) -> set[str]:
    """The workload keys of MOD's TIR kernels."""
    return {workload_key(f) for _gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def other_tvm_version(folder: Path) -> str | None:
    """The TVM version that wrote FOLDER's database when it is not this one (its records may not replay)."""
    written_by = read_notes(folder).get("tvm_version")
    return written_by if written_by and written_by != tvm.__version__ else None


def _json_lines(path: Path) -> list:
    """The parseable lines of a JSON-lines file (a torn last line, from a writer that is still running or was
    killed, is skipped)."""
    parsed = []
    for line in path.read_text().splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            continue
    return parsed


def database_for_compile(folder: Path, preset: TargetPreset,
                         keys: set[str]) -> tuple[ms.database.JSONDatabase | None, int, str | None]:
    """The records of FOLDER for the kernels with workload KEYS, as a database `kiln compile` applies for PRESET;
    how many records that is; and why nothing is applied when the folder's records cannot be (a warning for
    the user). Only the matching workloads are loaded (a shared database holds many models' kernels, and
    loading a workload costs about 40 ms), from a copy: the folder is never written, so a tune may be
    appending to it meanwhile."""
    if not has_database(folder):
        return None, 0, None
    check_target(folder, preset)
    written_by = other_tvm_version(folder)
    if written_by:
        return None, 0, (f"tuning log {folder} was written by TVM {written_by}, this is TVM {tvm.__version__}: "
                         "its records are not applied (retune with `kiln tune`)")
    workloads = _json_lines(folder / WORKLOADS)
    wanted = {index: new for new, index in enumerate(i for i, w in enumerate(workloads) if w[0] in keys)}
    records = [[wanted[r[0]], r[1]] for r in _json_lines(folder / RECORDS) if r[0] in wanted]
    if not records:
        return None, 0, None
    with scratch_dir("kiln-records-") as tmp:
        subset = Path(tmp)
        (subset / WORKLOADS).write_text("".join(json.dumps(workloads[i]) + "\n" for i in sorted(wanted)))
        (subset / RECORDS).write_text("".join(json.dumps(r) + "\n" for r in records))
        return ms.database.JSONDatabase(work_dir=str(subset), allow_missing=False), len(records), None


def _records(folder: Path) -> list[tuple[str, int, float | None]]:
    """Each record line of FOLDER's database with its workload index and mean run time in seconds (None for a
    failed run: MetaSchedule records those as 1e10 s)."""
    parsed = []
    for line in (folder / RECORDS).read_text().split("\n"):
        if not line.strip():
            continue
        workload, (_trace, run_secs, *_rest) = json.loads(line)
        times = [float(t) for t in run_secs or []]
        ok = times and all(t < 1e9 for t in times)
        parsed.append((line, workload, sum(times) / len(times) if ok else None))
    return parsed


def _keep_records(folder: Path, records: list, kept: list[str]) -> None:
    """Rewrite FOLDER's records file with the lines KEPT (atomically), unless nothing of RECORDS was dropped."""
    if len(kept) != len(records):
        atomic_write(folder / RECORDS, "".join(line + "\n" for line in kept))


def prune(folder: Path, keep: int) -> tuple[int, int]:
    """Keep the KEEP fastest successful records of each workload in FOLDER's database; returns (before, after)."""
    if not (folder / RECORDS).is_file():
        return 0, 0
    repair(folder)
    records = _records(folder)
    by_workload: dict[int, list[tuple[float, int]]] = {}
    for index, (_line, workload, mean) in enumerate(records):
        if mean is not None:
            by_workload.setdefault(workload, []).append((mean, index))
    kept = sorted(i for runs in by_workload.values() for _t, i in sorted(runs)[:keep])
    kept_lines = [records[i][0] for i in kept]
    _keep_records(folder, records, kept_lines)
    _drop_unused_workloads(folder, kept_lines)
    return len(records), len(kept)


def drop_workloads(folder: Path, keys: set[str]) -> int:
    """Remove the kernels with workload KEYS and all their records from FOLDER's database (the writer lock held);
    returns how many records went. A tune that times a kernel another way (`kiln tune --cache`) replaces its
    records with its best ones timed again: run times measured cold and warm cannot rank in one list."""
    if not has_database(folder) or not keys:
        return 0
    repair(folder)
    workloads = _json_lines(folder / WORKLOADS)
    dropped = {index for index, workload in enumerate(workloads) if workload[0] in keys}
    records = _records(folder)
    kept = [line for line, workload, _mean in records if workload not in dropped]
    _keep_records(folder, records, kept)
    _drop_unused_workloads(folder, kept)
    return len(records) - len(kept)


def _drop_unused_workloads(folder: Path, record_lines: list[str]) -> None:
    """Drop the workloads no record of RECORD_LINES (FOLDER's records file) refers to (kernels whose records were
    all pruned, or that were never searched) and renumber the records: a workload line holds a whole kernel,
    often over 100 KB. Both files are replaced together (_replace_together), under the tune's writer lock."""
    lines = [line for line in (folder / WORKLOADS).read_text().split("\n") if line.strip()]
    records = [json.loads(line) for line in record_lines]
    used = sorted({record[0] for record in records})
    if len(used) == len(lines):
        return
    renumber = {old: new for new, old in enumerate(used)}
    _replace_together(folder, {
        RECORDS: "".join(json.dumps([renumber[r[0]], r[1]], separators=(",", ":")) + "\n" for r in records),
        WORKLOADS: "".join(lines[i] + "\n" for i in used)})


def _replace_together(folder: Path, contents: dict[str, str]) -> None:
    """Replace FOLDER's files named in CONTENTS with it so that a kill at any moment leaves either all the old
    files or all the new ones (renumbered records must never meet the old workloads): the new files are written
    into a staging folder, which one rename makes PENDING (the commit), and then moved over the old ones;
    repair() finishes a move that a kill interrupted and discards a staging folder that never committed."""
    staging = Path(tempfile.mkdtemp(prefix=PENDING + ".", dir=folder))
    for name, text in contents.items():
        (staging / name).write_text(text)
    os.replace(staging, folder / PENDING)
    _finish_replacing(folder)


def _finish_replacing(folder: Path) -> None:
    """Move a committed PENDING set of files over FOLDER's current ones; drop staging folders left uncommitted."""
    pending = folder / PENDING
    if pending.is_dir():
        for path in sorted(pending.iterdir()):
            os.replace(path, folder / path.name)
        pending.rmdir()
    for staging in folder.glob(PENDING + ".*"):
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()


def apply_database(mod: tvm.IRModule, database: ms.database.JSONDatabase | None) -> tvm.IRModule:
    """Replace every kernel that has a tuned record in DATABASE by its best schedule (call inside the target)."""
    if database is None:
        return mod
    with database:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
