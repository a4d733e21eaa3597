"""Prometheus metrics of one server (its own registry, so several servers can live in one process).

Label values are bounded: ``model`` is a served model's name (or ``""`` for an unknown one) and
``route`` the name of a route, never a raw path, so a client cannot grow the series without limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Metrics:
    """The server's metrics: requests, latency, batch sizes, queue depth, inference time."""

    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=True))

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "specc_requests",
            "HTTP requests by model, route and status code",
            ["model", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "specc_request_duration_seconds",
            "Time from a request's arrival to its response, by model and route",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "specc_batch_size",
            "Rows (samples) per onnxruntime call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "specc_batch_requests",
            "Requests merged into one onnxruntime call",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "specc_inference_duration_seconds",
            "Time of one onnxruntime call (a whole batch)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("specc_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        self.rejected = Counter(
            "specc_queue_rejected",
            "Requests refused with 503 because the queue was full",
            ["model"],
            registry=r,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
