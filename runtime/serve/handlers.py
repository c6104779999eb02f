"""The HTTP side of `kiln serve`: one tornado handler per KServe v2 endpoint (plus the repository extension and
/metrics), the state they share, and the application that routes to them.

In: HTTP requests. Out: JSON (or binary tensor) answers; every client mistake a 4xx with {"error": ...}.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

import tornado.httputil
import tornado.iostream
import tornado.web

from .. import __version__
from ..errors import KilnError
from ..model import check_inputs, ordered_feeds
from .body import Body
from .metrics import UNKNOWN, ServerMetrics
from .options import ServeOptions
from .protocol import HEADER_LENGTH, ProtocolError, infer_response, parse_infer, shown, tensor_metadata
from .repository import READY, Repository

log = logging.getLogger(__name__)


class State:
    """What every handler shares: the repository, metrics, options, and the requests in flight."""

    def __init__(self, repository: Repository, options: ServeOptions, metrics: ServerMetrics):
        self.repository = repository
        self.options = options
        self.metrics = metrics
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        metrics.in_flight.set_function(lambda: self.in_flight)

    def update_gauge(self) -> None:
        self.metrics.models.set(sum(v.state == READY for v in self.repository.versions.values()))


class Handler(tornado.web.RequestHandler):
    """JSON in, JSON out; errors as {"error": "..."}; bearer-token check; in-flight accounting."""

    public = False  # health endpoints answer without a token (probes)

    def initialize(self, state: State):
        self.state = state

    def prepare(self):
        self.state.in_flight += 1
        self.state.idle.clear()
        self._counted = True
        if len(self.request.uri) > MAX_URL_BYTES:
            raise ProtocolError(414, f"the URL is {len(self.request.uri)} bytes long; the limit is {MAX_URL_BYTES}")
        header_bytes = sum(len(k) + len(v) + 4 for k, v in self.request.headers.get_all())
        if header_bytes > MAX_HEADER_BYTES:
            raise ProtocolError(431, f"the request headers are {header_bytes} bytes; the limit is "
                                     f"{MAX_HEADER_BYTES}")
        token = self.state.options.token
        if token and not self.public:
            given = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ProtocolError(401, "missing or wrong bearer token")

    def on_finish(self):
        if getattr(self, "_counted", False):
            self._counted = False
            self.state.in_flight -= 1
            if self.state.in_flight == 0:
                self.state.idle.set()

    def on_connection_close(self):
        super().on_connection_close()  # fails the body future a streaming handler waits on: else it waits forever
        self.on_finish()

    def write_json(self, body, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def send_error(self, status_code: int = 500, **kwargs) -> None:
        if self._headers_written:
            return
        error = kwargs.get("exc_info", (None, None))[1]
        if isinstance(error, tornado.iostream.StreamClosedError):  # the client hung up before the answer
            self.clear()
            self.set_status(499, "Client Closed Request")  # nginx's code; not a server fault, nothing to send
            self.finish()
            return
        if isinstance(error, ProtocolError):
            status_code, message = error.status, error.message
        elif isinstance(error, tornado.web.HTTPError) and error.status_code == 405:
            status_code, message = 405, (f"{self.request.method} is not allowed on {shown(self.request.path)} "
                                         f"(use {' or '.join(self._allowed_methods())})")
        elif isinstance(error, tornado.web.HTTPError):
            status_code = error.status_code
            message = error.log_message or tornado.httputil.responses.get(status_code, "error")
        else:
            if error is not None:
                log.exception("internal error on %s", self.request.path, exc_info=kwargs["exc_info"])
            message = "internal server error"
        self.clear()
        if status_code == 401:
            self.set_header("WWW-Authenticate", "Bearer")
        self.write_json({"error": message}, status_code)

    def _allowed_methods(self) -> list[str]:
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower()) is not getattr(tornado.web.RequestHandler, m.lower())]

    def log_exception(self, typ, value, tb):
        if not isinstance(value, (ProtocolError, tornado.web.HTTPError, tornado.iostream.StreamClosedError)):
            super().log_exception(typ, value, tb)


class NotFound(Handler):
    def prepare(self):
        super().prepare()
        raise ProtocolError(404, f"no endpoint {shown(self.request.path)}")


class Live(Handler):
    public = True

    def get(self):
        self.write_json({"live": True})


class Ready(Handler):
    public = True

    def get(self):
        ready = any(v.state == READY for v in self.state.repository.versions.values())
        self.write_json({"ready": ready}, 200 if ready else 503)


class ServerMetadata(Handler):
    def get(self):
        self.write_json({"name": "kiln", "version": __version__,
                         "extensions": ["binary_tensor_data", "model_repository"]})


class ModelMetadata(Handler):
    def get(self, name, version):
        entry = self.state.repository.get(name, version)
        manifest = entry.model.manifest
        self.write_json({"name": name, "versions": [v.version for v in self.state.repository.ready_versions(name)],
                         "platform": f"kiln_tvm_{manifest.device}",
                         "inputs": [tensor_metadata(s) for s in manifest.inputs],
                         "outputs": [tensor_metadata(s) for s in manifest.outputs]})


class ModelReady(Handler):
    def get(self, name, version):
        try:
            self.state.repository.get(name, version)
        except ProtocolError as err:
            if err.status == 404:
                raise
            self.write_json({"name": name, "ready": False}, 503)
            return
        self.write_json({"name": name, "ready": True})


@tornado.web.stream_request_body
class Infer(Handler):
    """POST infer: the body is streamed so an oversized one is refused (413) before it is read whole."""

    def prepare(self):
        self.body = None
        super().prepare()
        self.started = time.perf_counter()
        self.limit = int(self.state.options.max_body_mb * 1e6)
        length = self.request.headers.get("Content-Length")
        if length is not None and not (length.strip().isdigit() and length.strip().isascii()):
            raise ProtocolError(400, f"Content-Length {shown(length)!r} is not a whole number of bytes")
        if length is not None and int(length) > self.limit:
            raise ProtocolError(413, f"the request body ({int(length)} bytes) exceeds the limit of {self.limit} "
                                     "bytes (--max-body-mb)")
        self.body = Body(self.limit, self.request.headers.get("Content-Encoding"))
        # tornado's own cap (it answers a bare 400) sits above ours, so a chunked body over the limit gets a 413
        self.request.connection.set_max_body_size(self.limit + (1 << 20))

    def data_received(self, chunk: bytes):
        if self._finished or self.body is None:
            return
        try:
            self.body.feed(chunk)
        except ProtocolError as error:  # over the limit (or damaged gzip): answer now, keep nothing, read no more
            self.body = None
            self.send_error(error.status, exc_info=(ProtocolError, error, None))

    def on_finish(self):
        self.body = None  # a refused or abandoned body is not kept until the handler is collected
        super().on_finish()

    async def post(self, name, version):
        if self._finished:  # answered already (413 while streaming)
            return
        state = self.state
        try:
            entry = state.repository.get(name, version)
        except ProtocolError as err:
            if err.status == 404:  # clients choose the names: every unknown one is counted under one label
                model_label, version_label = name if state.repository.has(name) else UNKNOWN, UNKNOWN
            else:
                model_label, version_label = name, version or ""
            state.metrics.requests.labels(model_label, version_label, str(err.status)).inc()
            raise
        labels = (name, entry.version)
        try:
            body, self.body = self.body.bytes(), None
            request = parse_infer(body, self.request.headers.get(HEADER_LENGTH))
            feeds = self._checked(entry, request)
            results, timing = await asyncio.wait_for(entry.scheduler.infer(feeds),
                                                     state.options.request_timeout_s)
        except asyncio.TimeoutError:
            state.metrics.requests.labels(*labels, "504").inc()
            raise ProtocolError(504, f"inference took longer than {state.options.request_timeout_s:g} s "
                                     "(--request-timeout-s)") from None
        except ProtocolError as err:
            state.metrics.requests.labels(*labels, str(err.status)).inc()
            raise
        body, headers = infer_response(name, entry.version, request, results)
        for key, value in headers.items():
            self.set_header(key, value)
        self.finish(body)
        state.metrics.requests.labels(*labels, "200").inc()
        state.metrics.latency.labels(*labels, "queue").observe(timing.queue)
        state.metrics.latency.labels(*labels, "inference").observe(timing.inference)
        state.metrics.latency.labels(*labels, "total").observe(time.perf_counter() - self.started)
        state.metrics.batch.labels(*labels).observe(timing.batch_size)

    @staticmethod
    def _checked(entry, request) -> dict:
        """REQUEST's inputs checked against the model (names, dtypes, shapes) before any work: 400 otherwise."""
        specs = entry.model.inputs
        try:
            ordered = ordered_feeds(specs, request.inputs, entry.model.manifest.bound_inputs)
            outputs = {s.name for s in entry.model.outputs}
            wanted = [o for o in request.outputs or [] if o not in outputs]
            if wanted:
                raise ProtocolError(400, f"unknown output(s) {wanted}; the model has {sorted(outputs)}")
            arrays = check_inputs(specs, ordered)
        except KilnError as err:
            raise ProtocolError(400, str(err)) from None
        return {s.name: a for s, a in zip(specs, arrays)}


class RepositoryIndex(Handler):
    def post(self):
        self.write_json(self.state.repository.index())


class RepositoryControl(Handler):
    async def post(self, name, action):
        if action == "load":
            await self.state.repository.load(name)
        else:
            self.state.repository.unload(name)
        self.state.update_gauge()
        self.write_json({})


class Metrics(Handler):
    def get(self):
        self.state.update_gauge()
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(self.state.metrics.render())


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Access log: server faults as warnings; every answered or refused request at debug level only (a shed
    request is normal under overload, and thousands of lines a second would slow the server further)."""
    status = handler.get_status()
    level = logging.WARNING if status >= 500 and status not in (503, 504) else logging.DEBUG
    logging.getLogger("tornado.access").log(level, "%d %s %.2fms", status, handler._request_summary(),
                                            1000.0 * handler.request.request_time())


MAX_URL_BYTES = 8192  # as nginx and Triton's front end allow by default
MAX_HEADER_BYTES = 65536  # all header lines together; tornado reads up to HEADER_READ_BYTES before refusing
HEADER_READ_BYTES = 1 << 20  # past this tornado closes the connection without an answer
_MODEL = r"/v2/models/([^/]+)(?:/versions/([^/]+))?"


def make_app(state: State) -> tornado.web.Application:
    """The tornado application: KServe v2 endpoints, the repository extension and /metrics."""
    routes = [(r"/v2/health/live", Live), (r"/v2/health/ready", Ready), (r"/v2/?", ServerMetadata),
              (_MODEL + r"/?", ModelMetadata), (_MODEL + r"/ready", ModelReady), (_MODEL + r"/infer", Infer),
              (r"/v2/repository/index", RepositoryIndex),
              (r"/v2/repository/models/([^/]+)/(load|unload)", RepositoryControl), (r"/metrics", Metrics)]
    return tornado.web.Application([(path, handler, {"state": state}) for path, handler in routes],
                                   default_handler_class=NotFound, default_handler_args={"state": state},
                                   log_function=_log_request)
