"""Tuning records in tuning_logs/TARGET/: open a target's MetaSchedule database and apply it to a module."""

from __future__ import annotations

import logging
from pathlib import Path

import tvm
from tvm import relax
from tvm.s_tir import meta_schedule as ms

log = logging.getLogger(__name__)

TUNING_LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"
_WORKLOADS, _RECORDS = "database_workload.json", "database_tuning_record.json"


def database_dir(target_name: str, root: Path | None = None) -> Path:
    """The folder that holds TARGET_NAME's database."""
    return (root or TUNING_LOGS) / target_name


def open_database(folder: Path) -> ms.database.JSONDatabase | None:
    """The JSON database in FOLDER, or None when FOLDER holds none."""
    if not (folder / _WORKLOADS).is_file() or not (folder / _RECORDS).is_file():
        return None
    return ms.database.JSONDatabase(work_dir=str(folder), allow_missing=False)


def apply_database(mod: tvm.IRModule, database: ms.database.JSONDatabase | None) -> tvm.IRModule:
    """Replace every kernel that has a tuned record in DATABASE by its best schedule (call inside the target)."""
    if database is None:
        return mod
    with database:
        return relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
