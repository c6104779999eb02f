"""One model version's request queue: bounded, run off the event loop, optionally batched dynamically.

A model version runs one batch at a time, always on the same thread of its own: a TVM VM is not safe to call from
two threads at once, each run already uses every core through TVM's worker pool, and that pool belongs to the
calling thread (its workers spin a while after each run; runs alternating between two threads had two pools
fighting over the cores: 21 ms instead of 14 for ResNet-18). Requests wait in a queue of at most `max_queue`; a request that finds
it full is refused at once (503) instead of queueing without limit. With `max_batch` > 1, a model whose inputs
and outputs share a symbolic first dimension gets requests concatenated along it: the first request waits up to
`batch_timeout` for others, then the batch runs and each request gets its own rows back.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..model import Model
from .protocol import ProtocolError


@dataclass
class Timing:
    """Where one request's time went, in seconds."""

    queue: float = 0.0
    inference: float = 0.0
    batch_size: int = 1


@dataclass
class _Pending:
    feeds: dict[str, np.ndarray]
    rows: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


def batch_dim(model: Model) -> str | None:
    """The symbolic first dimension every input and output of MODEL shares (its batch), or None."""
    specs = model.inputs + model.outputs
    first = {str(s.shape[0]) if s.shape else "" for s in specs}
    name = next(iter(first)) if len(first) == 1 else None
    return name if name and all(s.shape and isinstance(s.shape[0], str) for s in specs) else None


class Scheduler:
    """Runs MODEL's requests on a thread of its own, one batch at a time, with a queue of at most MAX_QUEUE
    requests."""

    def __init__(self, model: Model, max_batch: int = 1, batch_timeout: float = 0.0, max_queue: int = 64):
        self.model = model
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kiln-{model.path.stem}")
        self.max_batch = max_batch if batch_dim(model) else 1
        self.batch_timeout = batch_timeout
        self.max_queue = max_queue
        self._queue: list[_Pending] = []
        self._full = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._closing = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def infer(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timing]:
        """Outputs of one request (its inputs already checked against the model), and where its time went."""
        if len(self._queue) >= self.max_queue:
            raise ProtocolError(503, f"the server is overloaded ({self.max_queue} requests queued for this "
                                     "model); retry later")
        rows = next(iter(feeds.values())).shape[0] if self.max_batch > 1 else 1
        pending = _Pending(feeds, rows, asyncio.get_running_loop().create_future())
        self._queue.append(pending)
        if sum(p.rows for p in self._queue) >= self.max_batch:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:  # the caller gave up (timeout): leave the queue if still waiting
            if pending in self._queue:
                self._queue.remove(pending)
            raise

    def _take(self) -> list[_Pending]:
        """The next batch: the first request, then those after it with the same trailing shapes, up to
        max_batch rows."""
        first = self._queue.pop(0)
        batch, rows = [first], first.rows
        shapes = {k: v.shape[1:] for k, v in first.feeds.items()}
        for pending in list(self._queue):
            if rows + pending.rows > self.max_batch:
                break
            if all(pending.feeds[k].shape[1:] == s for k, s in shapes.items()):
                self._queue.remove(pending)
                batch.append(pending)
                rows += pending.rows
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            if self.max_batch > 1 and sum(p.rows for p in self._queue) < self.max_batch:
                wait = self._queue[0].enqueued + self.batch_timeout - time.perf_counter()
                if wait > 0:
                    self._full.clear()
                    try:
                        await asyncio.wait_for(self._full.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                if not self._queue:
                    break
            batch = self._take()
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self._run, [p.feeds for p in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request learns of the failure
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(err)
                continue
            took = time.perf_counter() - started
            for pending, result in zip(batch, results):
                if not pending.future.done():
                    pending.future.set_result((result, Timing(started - pending.enqueued, took, len(batch))))
        if self._closing:
            self.executor.shutdown(wait=False)

    def _run(self, feeds_list: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run one batch (in an executor thread) and split the outputs back per request."""
        if len(feeds_list) == 1:
            return [self.model.run(feeds_list[0])]
        joined = {name: np.concatenate([f[name] for f in feeds_list]) for name in feeds_list[0]}
        outputs = self.model.run(joined)
        bounds = np.cumsum([next(iter(f.values())).shape[0] for f in feeds_list])[:-1]
        split = {name: np.split(value, bounds) for name, value in outputs.items()}
        return [{name: parts[i] for name, parts in split.items()} for i in range(len(feeds_list))]

    def close(self) -> None:
        """Release the model's thread once the requests it already has are answered."""
        self._closing = True
        if not self._queue and (self._worker is None or self._worker.done()):
            self.executor.shutdown(wait=False)
