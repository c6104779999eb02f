"""The server's Prometheus metrics, in a registry of its own (one per server: tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
UNKNOWN = "(unknown)"  # the model / version label of a request for one the server does not have


class ServerMetrics:
    """Requests by model/version/status, latency by phase (queue, inference, total), batch sizes, models
    loaded, requests in flight."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("kiln_requests", "Inference requests by model, version and HTTP status",
                                ["model", "version", "status"], registry=self.registry)
        self.latency = Histogram("kiln_request_seconds", "Inference request latency by phase",
                                 ["model", "version", "phase"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("kiln_batch_size", "Size of the batch each request ran in", ["model", "version"],
                               buckets=_BATCH_BUCKETS, registry=self.registry)
        self.models = Gauge("kiln_models_loaded", "Model versions loaded and ready", registry=self.registry)
        self.in_flight = Gauge("kiln_requests_in_flight", "HTTP requests being served (this scrape included)",
                               registry=self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
