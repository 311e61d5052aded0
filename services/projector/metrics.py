"""Prometheus metrics of the projector, registered on the shared :data:`REGISTRY`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.observability.metrics import LATENCY_BUCKETS, REGISTRY

EVENTS = Counter(
    "switchyard_projector_events_total",
    "Run events seen by the projector: applied, or duplicate (already projected, skipped)",
    ["tenant", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "switchyard_projector_dead_letters_total",
    "Records of the dead-letter topic stored in dead_letters, by error kind",
    ["error_kind"],
    registry=REGISTRY,
)
REJECTS = Counter(
    "switchyard_projector_rejects_total",
    "Records of the events or dlq topic that could not be projected (stored in projector_rejects)",
    ["reason"],
    registry=REGISTRY,
)
BATCH_SECONDS = Histogram(
    "switchyard_projector_batch_seconds",
    "Time to write one batch (rows and offsets) in one database transaction",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_RECORDS = Histogram(
    "switchyard_projector_batch_records",
    "Records per committed batch",
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
    registry=REGISTRY,
)
BATCH_RETRIES = Counter(
    "switchyard_projector_batch_retries_total",
    "Batches retried after a database error",
    registry=REGISTRY,
)
LAG_SECONDS = Gauge(
    "switchyard_projector_lag_seconds",
    "Now minus the `at` of the newest event projected from the partition (0 when caught up)",
    ["partition"],
    registry=REGISTRY,
)
ASSIGNED_PARTITIONS = Gauge(
    "switchyard_projector_assigned_partitions",
    "Partitions of the events topic owned by this projector",
    registry=REGISTRY,
)
