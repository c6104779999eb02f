"""The models a server serves: a model repository folder (NAME/VERSION/*.so) and/or artifacts named directly.

Each (name, version) is loaded on its own: a broken artifact is reported (state UNAVAILABLE, with the reason) and
never takes down the versions that serve. `refresh()` rescans the sources: new or rewritten versions are loaded,
removed ones dropped, without a restart. The default version of a model is its newest READY one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from .. import model as runtime_model
from ..errors import KilnError
from .protocol import ProtocolError, shown
from .scheduler import Scheduler

log = logging.getLogger(__name__)
READY, UNAVAILABLE = "READY", "UNAVAILABLE"


@dataclass
class Version:
    """One version of one model: where it comes from, whether it serves, and why not."""

    name: str
    version: str
    path: Path
    stamp: tuple[int, float]  # (size, mtime) of the artifact when it was loaded
    state: str = UNAVAILABLE
    reason: str = ""
    scheduler: Scheduler | None = None

    @property
    def model(self) -> runtime_model.Model:
        return self.scheduler.model


def _version_key(version: str) -> tuple:
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def scan(sources: list[Path]) -> dict[tuple[str, str], Path]:
    """(name, version) -> artifact path for SOURCES: an artifact file is NAME (its file name up to the first dot)
    version 1; a folder is a repository of NAME/VERSION/ folders, each holding one .so (model.so preferred)."""
    found = {}
    for source in sources:
        if source.is_file():
            found[(source.name.split(".", 1)[0], "1")] = source
            continue
        for model_dir in sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else ():
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                artifacts = sorted(version_dir.glob("*.so"), key=lambda p: (p.name != "model.so", p.name))
                if artifacts:
                    found[(model_dir.name, version_dir.name)] = artifacts[0]
    return found


def _stamp(path: Path) -> tuple[int, float]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime


class Repository:
    """The versions of every model in SOURCES; MAKE_SCHEDULER(model) wraps each loaded model."""

    def __init__(self, sources: list[Path], executor: Executor, make_scheduler: Callable[..., Scheduler],
                 threads: int | None = None):
        missing = [str(s) for s in sources if not s.exists()]
        if missing:
            raise KilnError(f"model source(s) not found: {', '.join(missing)}",
                            "pass artifacts (.so) or a repository folder of NAME/VERSION/model.so")
        self.sources = sources
        self.executor = executor
        self.make_scheduler = make_scheduler
        self.threads = threads
        self.versions: dict[tuple[str, str], Version] = {}
        self.unloaded: set[str] = set()  # names unloaded through the API: not reloaded by polling

    def _load(self, entry: Version) -> Version:
        """Load ENTRY's artifact (blocking: call from an executor); the reason names no file path."""
        try:
            entry.scheduler = self.make_scheduler(runtime_model.load(entry.path, threads=self.threads))
            entry.state, entry.reason = READY, ""
        except KilnError as err:
            entry.state, entry.reason = UNAVAILABLE, str(err).replace(str(entry.path), f"{entry.name}/"
                                                                      f"{entry.version}")
            log.warning("model %s version %s is unavailable: %s", entry.name, entry.version, entry.reason)
        except Exception as err:  # noqa: BLE001 - any failure leaves this version out, never the server
            entry.state, entry.reason = UNAVAILABLE, f"the artifact could not be loaded ({type(err).__name__})"
            log.warning("model %s version %s is unavailable: %r", entry.name, entry.version, err)
        return entry

    async def refresh(self, only: str | None = None) -> list[str]:
        """Rescan the sources (or just model ONLY) and load what is new or changed; returns what changed."""
        loop = asyncio.get_running_loop()
        found = await loop.run_in_executor(self.executor, scan, self.sources)
        changes = []
        for key in [k for k in self.versions if k not in found and (only is None or k[0] == only)]:
            self._drop(key)
            changes.append(f"removed {key[0]} version {key[1]}")
        for key, path in sorted(found.items()):
            if (only is not None and key[0] != only) or key[0] in self.unloaded:
                continue
            try:
                stamp = _stamp(path)
            except OSError:
                continue  # removed while scanning; the next refresh sees it gone
            current = self.versions.get(key)
            if current is not None and current.stamp == stamp and current.path == path:
                continue
            entry = await loop.run_in_executor(self.executor, self._load, Version(*key, path, stamp))
            if current is not None:
                self._drop(key)  # requests in flight finish on the old scheduler
            self.versions[key] = entry
            changes.append(f"{'reloaded' if current else 'loaded'} {key[0]} version {key[1]}: {entry.state}"
                           + (f" ({entry.reason})" if entry.reason else ""))
        return changes

    async def load(self, name: str) -> None:
        """(Re)load every version of NAME from the sources (the repository extension's load)."""
        self.unloaded.discard(name)
        for key in [k for k in self.versions if k[0] == name]:
            self.versions[key].stamp = (-1, -1.0)  # force a reload
        await self.refresh(only=name)
        if not any(k[0] == name for k in self.versions):
            raise ProtocolError(404, f"no model named '{shown(name)}' in the repository")
        if not any(v.state == READY for (n, _v), v in self.versions.items() if n == name):
            raise ProtocolError(400, f"model '{name}' failed to load: "
                                + "; ".join(v.reason for (n, _), v in self.versions.items() if n == name))

    def unload(self, name: str) -> None:
        """Stop serving NAME until it is loaded again (the repository extension's unload)."""
        keys = [k for k in self.versions if k[0] == name]
        if not keys:
            raise ProtocolError(404, f"no model named '{shown(name)}'")
        for key in keys:
            self._drop(key)
        self.unloaded.add(name)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self.versions.pop(key)
        if entry.scheduler is not None:
            entry.scheduler.close()

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.versions})

    def ready_versions(self, name: str) -> list[Version]:
        """NAME's READY versions, newest first."""
        found = [v for (n, _), v in self.versions.items() if n == name and v.state == READY]
        return sorted(found, key=lambda v: _version_key(v.version), reverse=True)

    def has(self, name: str) -> bool:
        """Whether any version of NAME is known (ready or not)."""
        return any(n == name for n, _ in self.versions)

    def get(self, name: str, version: str | None = None) -> Version:
        """The version to serve (newest READY when VERSION is None); ProtocolError 404 / 503 otherwise."""
        if not self.has(name):
            raise ProtocolError(404, f"unknown model '{shown(name)}' (served: {', '.join(self.names()) or 'none'})")
        if version is not None:
            entry = self.versions.get((name, version))
            if entry is None:
                known = sorted((v for n, v in self.versions if n == name), key=_version_key)
                raise ProtocolError(404, f"model '{name}' has no version '{shown(version)}' "
                                         f"(versions: {', '.join(known)})")
            if entry.state != READY:
                raise ProtocolError(503, f"model '{name}' version {version} is not ready: {entry.reason}")
            return entry
        ready = self.ready_versions(name)
        if not ready:
            raise ProtocolError(503, f"model '{name}' has no ready version")
        return ready[0]

    def index(self) -> list[dict]:
        """The repository extension's index: every version with its state (and reason when unavailable)."""
        rows = [{"name": v.name, "version": v.version, "state": v.state, "reason": v.reason}
                for v in self.versions.values()]
        rows += [{"name": n, "version": "", "state": UNAVAILABLE, "reason": "unloaded"} for n in sorted(self.unloaded)]
        return sorted(rows, key=lambda r: (r["name"], _version_key(r["version"])))
