"""`kiln serve`: a tornado server speaking the KServe v2 protocol over a Repository of artifacts (the endpoints are
handlers.py; this module starts, polls and stops the server)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tornado.httpserver
import tornado.netutil
import tornado.web

from ..errors import KilnError
from ..tvm_runtime import usable_cpus
from .handlers import HEADER_READ_BYTES, State, make_app
from .metrics import ServerMetrics
from .options import ServeOptions
from .repository import READY, Repository
from .scheduler import Scheduler

log = logging.getLogger(__name__)


class Server:
    """A running server: start() loads the models and listens; stop() finishes requests in flight, then exits."""

    def __init__(self, sources: list[str | Path], options: ServeOptions | None = None):
        self.options = options or ServeOptions()
        # loading and scanning; each model version runs on a thread of its own (see Scheduler)
        self.executor = ThreadPoolExecutor(max_workers=max(1, len(usable_cpus())), thread_name_prefix="kiln-load")
        opts = self.options

        def make_scheduler(model):
            return Scheduler(model, opts.max_batch, opts.batch_timeout_ms / 1000, opts.max_queue)

        self.repository = Repository([Path(s) for s in sources], self.executor, make_scheduler, opts.threads)
        self.state = State(self.repository, opts, ServerMetrics())
        self.http: tornado.httpserver.HTTPServer | None = None
        self._poller: asyncio.Task | None = None
        self.port = opts.port

    async def start(self) -> list[str]:
        """Load every model version and listen; returns what was loaded (and what failed)."""
        changes = await self.repository.refresh()
        self.state.update_gauge()
        app = make_app(self.state)
        # gzip bodies are inflated by the infer handler (body.py), which answers 413 / 400 in JSON
        self.http = _HTTPServer(app, decompress_request=False, max_header_size=HEADER_READ_BYTES,
                                max_body_size=int(self.options.max_body_mb * 1e6) + 1)
        sockets = tornado.netutil.bind_sockets(self.options.port, self.options.host)
        self.port = sockets[0].getsockname()[1]
        self.http.add_sockets(sockets)
        if self.options.poll_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        return changes

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.options.poll_s)
            try:
                for change in await self.repository.refresh():
                    log.warning("repository: %s", change)
                self.state.update_gauge()
            except Exception:  # noqa: BLE001 - a failed scan is retried at the next period
                log.exception("repository scan failed")

    async def stop(self) -> None:
        """Stop listening, let the requests in flight finish (up to grace_s), then release the workers."""
        if self._poller:
            self._poller.cancel()
        if self.http:
            self.http.stop()
        try:
            await asyncio.wait_for(self.state.idle.wait(), self.options.grace_s)
        except asyncio.TimeoutError:
            log.warning("%d request(s) still in flight after %g s; stopping", self.state.in_flight,
                        self.options.grace_s)
        if self.http:
            await self.http.close_all_connections()
        for version in self.repository.versions.values():
            if version.scheduler is not None:
                version.scheduler.close()
        self.executor.shutdown(wait=False)


_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"  # what tornado's HTTP/1 parser sends for a request it cannot parse
_MALFORMED = json.dumps({"error": "malformed HTTP request (a Content-Length that is not a number, a broken "
                                  "chunked body, or an unreadable header line): fix the client's HTTP"}).encode()


class _HTTPServer(tornado.httpserver.HTTPServer):
    """tornado's server, except that a request its HTTP parser refuses gets a JSON 400 like every other client
    mistake, instead of a bare status line."""

    def handle_stream(self, stream, address):
        write = stream.write

        def write_json_refusal(data, *args, **kwargs):
            if data == _BARE_400:
                data = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(_MALFORMED), _MALFORMED))
            return write(data, *args, **kwargs)

        stream.write = write_json_refusal
        super().handle_stream(stream, address)


def serve(sources: list[str | Path], options: ServeOptions, announce=print) -> None:
    """Run a server until SIGINT / SIGTERM, then shut down gracefully."""

    async def main():
        server = Server(sources, options)
        for change in await server.start():
            announce(change)
        if not any(v.state == READY for v in server.repository.versions.values()):
            announce("warning: no model version is ready")
        announce(f"serving {len(server.repository.names())} model(s) on http://{options.host}:{server.port} "
                 "(KServe v2: /v2/models/NAME/infer; /metrics)")
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        announce(f"shutting down: {server.state.in_flight} request(s) in flight")
        await server.stop()

    asyncio.run(main())


def read_token(path: str | None) -> str | None:
    """The bearer token in the file at PATH (stripped), or None without a path."""
    if path is None:
        return None
    try:
        token = Path(path).read_text().strip()
    except OSError as err:
        raise KilnError(f"cannot read the token file ({err.strerror})", "pass a readable --token-file") from None
    if not token:
        raise KilnError("the token file is empty", "write the bearer token into it")
    if os.stat(path).st_mode & 0o077:
        log.warning("the token file is readable by other users; chmod 600 it")
    return token
