"""ServeOptions: how `kiln serve` runs (limits, batching, auth, polling)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeOptions:
    """How the server runs; the defaults are `kiln serve`'s."""

    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None  # TVM worker threads per run (None: every usable CPU)
    max_batch: int = 1
    batch_timeout_ms: float = 2.0
    max_queue: int = 64  # requests waiting per model version before 503
    max_body_mb: float = 64.0
    request_timeout_s: float = 30.0
    token: str | None = None
    poll_s: float = 5.0  # repository rescan period (0: only through the load endpoint)
    grace_s: float = 30.0  # how long shutdown waits for requests in flight
