"""Prometheus metrics of every service, registered on one registry that tests can replace.

Buckets are explicit: latencies from sub-millisecond (in-memory routing) to tens of seconds
(slow actions).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)

#: The one ``tenant`` label value of every tenant name that is not registered (dead letters of
#: unknown tenants, forged records): made-up names must not create a series each.
UNREGISTERED_TENANT = "_unregistered"


def tenant_label(tenant: str | None, registered: bool) -> str:
    """The ``tenant`` label for a record naming ``tenant``: itself only when it is registered."""
    if not tenant:
        return ""
    return tenant if registered else UNREGISTERED_TENANT


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

TXN_COMMIT_SECONDS = Histogram(
    "switchyard_transaction_seconds",
    "Time of one consume-process-commit transaction",
    ["service"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TXN_ABORTS = Counter(
    "switchyard_transaction_aborts_total", "Transactions aborted and rewound", ["service"], registry=REGISTRY
)
TXN_OVERDUE_CALLS = Counter(
    "switchyard_transaction_calls_overdue_total",
    "Transactional client calls still blocked past their timeout (see services/bus/txn_guard.py)",
    ["service", "call"],
    registry=REGISTRY,
)
TXN_PRODUCER_REPLACED = Counter(
    "switchyard_transaction_producer_replaced_total",
    "Transactional producers replaced (fatal error, failed abort, lost cluster connection)",
    ["service"],
    registry=REGISTRY,
)
TXN_RETRIES = Counter(
    "switchyard_transaction_call_retries_total",
    "Transactional calls repeated after a retriable error",
    ["service", "call"],
    registry=REGISTRY,
)
TXN_RECORDS = Counter(
    "switchyard_transaction_records_total",
    "Records consumed (in) and produced (out) in committed transactions",
    ["service", "direction"],
    registry=REGISTRY,
)
PROCESSOR_ERRORS = Counter(
    "switchyard_processor_errors_total",
    "Exceptions raised by a processor inside a transaction (the transaction is aborted and rewound),"
    " by stage (process, tick, poison)",
    ["service", "stage"],
    registry=REGISTRY,
)
POISON_RECORDS = Counter(
    "switchyard_poison_records_total",
    "Records isolated by the poison-batch guard (services/bus/poison.py) and dead-lettered",
    ["service"],
    registry=REGISTRY,
)
BISECTION_STEPS = Counter(
    "switchyard_bisection_steps_total",
    "Transactions run by the poison-batch guard while bisecting a failing batch",
    ["service"],
    registry=REGISTRY,
)
PARTITIONS_STALLED = Gauge(
    "switchyard_partitions_stalled",
    "Partitions of a service's loop with records to process but no commit progress for longer than"
    " SWITCHYARD_STALL_AFTER_S (paused partitions excluded); evaluated at scrape time",
    ["service"],
    registry=REGISTRY,
)
PROGRESS_AGE_SECONDS = Gauge(
    "switchyard_partition_progress_age_seconds",
    "Seconds since the last commit progress of a service's oldest partition that has records to"
    " process (0 when every partition is caught up); evaluated at scrape time",
    ["service"],
    registry=REGISTRY,
)
HANDLER_SECONDS = Histogram(
    "switchyard_handler_seconds",
    "Time to handle one record",
    ["service", "kind", "tenant"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ACTION_SECONDS = Histogram(
    "switchyard_action_seconds",
    "Time of one action attempt",
    ["action", "tenant", "outcome"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DLQ_RECORDS = Counter(
    "switchyard_dlq_records_total",
    "Records sent to the dead-letter topic",
    ["service", "reason", "tenant"],
    registry=REGISTRY,
)
STEP_RETRIES = Counter(
    "switchyard_step_retries_total",
    "Step attempts scheduled after a failure or timeout",
    ["tenant", "workflow"],
    registry=REGISTRY,
)
RUNS_FINISHED = Counter(
    "switchyard_runs_finished_total",
    "Runs that reached a terminal state",
    ["tenant", "workflow", "state"],
    registry=REGISTRY,
)
RUNS_STARTED = Counter(
    "switchyard_runs_started_total",
    "Runs accepted by the router core",
    ["tenant", "workflow"],
    registry=REGISTRY,
)
RUNS_IN_FLIGHT = Gauge("switchyard_runs_in_flight", "Runs running now", ["tenant"], registry=REGISTRY)
RUNS_PENDING = Gauge(
    "switchyard_runs_pending", "Runs waiting for a concurrency slot", ["tenant"], registry=REGISTRY
)
STALE_RESULTS = Counter(
    "switchyard_stale_results_total",
    "Step results ignored (stale attempt, finished or unknown run)",
    ["tenant", "reason"],
    registry=REGISTRY,
)
ROUTER_STATE_RUNS = Gauge("switchyard_router_state_runs", "Runs held in router memory", registry=REGISTRY)
ROUTER_RESTORE_SECONDS = Histogram(
    "switchyard_router_restore_seconds",
    "Time to restore router state on assignment",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
ROUTER_HISTORY_LOOKUPS = Counter(
    "switchyard_router_history_lookups_total",
    "Questions the router core asked the run history in PostgreSQL (known: a batch's new run ids;"
    " load: a run to replay), by outcome (ok, unavailable)",
    ["question", "outcome"],
    registry=REGISTRY,
)
ROUTER_HISTORY_LOOKUP_SECONDS = Histogram(
    "switchyard_router_history_lookup_seconds",
    "Time of one question to the run history",
    ["question"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
EVENT_DELIVERIES = Counter(
    "switchyard_event_deliveries_total",
    "Tenant events forwarded to a router partition for waiting runs (wait_for), by outcome: matched"
    " (completed at least one waiting step), unmatched (no waiting step matched: the event is not"
    " kept), over_cap (some waiting runs were not tried: SWITCHYARD_EVENT_WAIT_CANDIDATES)",
    ["tenant", "outcome"],
    registry=REGISTRY,
)
EVENT_MATCH_ERRORS = Counter(
    "switchyard_event_match_errors_total",
    "wait_for match expressions that failed to evaluate on an event (the step keeps waiting)",
    ["tenant"],
    registry=REGISTRY,
)
TRIGGERS = Counter(
    "switchyard_triggers_total",
    "Triggers seen by intake, by outcome",
    ["tenant", "outcome"],
    registry=REGISTRY,
)
THROTTLED_SECONDS = Counter(
    "switchyard_throttled_seconds_total",
    "Seconds a tenant's trigger partitions spent paused by intake",
    ["tenant", "reason"],
    registry=REGISTRY,
)

# --- consumer lag (services.observability.lag), service health (services.runtime) ---
CONSUMER_LAG = Gauge(
    "switchyard_consumer_lag",
    "Records not yet consumed by a consumer group: log end offset minus committed offset "
    "(tenant is the trigger topic's tenant, '' for internal topics)",
    ["group", "topic", "partition", "tenant"],
    registry=REGISTRY,
)
TOPIC_END_OFFSET = Gauge(
    "switchyard_topic_end_offset",
    "Log end offset (high watermark) of a partition consumed by this process's groups; "
    "rate() of it is the topic's write throughput",
    ["topic", "partition", "tenant"],
    registry=REGISTRY,
)
LAG_COLLECTIONS = Counter(
    "switchyard_lag_collections_total",
    "Lag collector rounds, by outcome (ok, error)",
    ["outcome"],
    registry=REGISTRY,
)
SERVICE_READY = Gauge(
    "switchyard_service_ready",
    "1 when the service in this process is ready (assigned its partitions), else 0",
    ["service"],
    registry=REGISTRY,
)
SERVICE_UP = Gauge(
    "switchyard_service_up",
    "1 while the service's thread runs, 0 once it has stopped or died",
    ["service"],
    registry=REGISTRY,
)

DEFINITIONS_REFUSED = Gauge(
    "switchyard_definitions_refused",
    "Definition records the registry reader refuses now, by reason (version_conflict, tampered,"
    " unknown_key, key_expired, unknown_tenant, invalid_definition, ...); see"
    " services/registry/definitions.py",
    ["reason"],
    registry=REGISTRY,
)


# --- executor guardrails (services.executor.guardrails) ---
BREAKER_STATE = Gauge(
    "switchyard_circuit_breakers",
    "Circuit breakers (one per target, bounded LRU) by tenant, action and state (closed, half_open,"
    " open); updated on transitions. The target is not a label: its values are unbounded",
    ["tenant", "action", "state"],
    registry=REGISTRY,
)
BREAKER_REJECTIONS = Counter(
    "switchyard_circuit_breaker_rejections_total",
    "Action calls failed fast by an open circuit breaker",
    ["tenant", "action"],
    registry=REGISTRY,
)
EXTERNAL_CALL_THROTTLED_SECONDS = Counter(
    "switchyard_external_call_throttled_seconds_total",
    "Seconds external calls waited for the tenant's external-call rate limit",
    ["tenant"],
    registry=REGISTRY,
)
PERMISSION_DENIED = Counter(
    "switchyard_permission_denied_total",
    "Action attempts denied for missing scopes",
    ["tenant", "action"],
    registry=REGISTRY,
)


class RunsByStateCollector(Collector):
    """``switchyard_runs_by_state{tenant,state}``: the router's active runs by state, at scrape time.

    Derived from :data:`RUNS_IN_FLIGHT` (state ``running``: running or retrying, holding a slot)
    and :data:`RUNS_PENDING` (state ``pending``: waiting for a slot), so it can never disagree
    with them. Terminal states are counted by ``switchyard_runs_finished_total{state}``.
    """

    NAME = "switchyard_runs_by_state"
    SOURCES = (("running", RUNS_IN_FLIGHT), ("pending", RUNS_PENDING))

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self.NAME, "Active runs by tenant and state", labels=["tenant", "state"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.NAME, "Active runs by tenant and state", labels=["tenant", "state"])
        for state, gauge in self.SOURCES:
            for metric in gauge.collect():
                for sample in metric.samples:
                    family.add_metric([sample.labels["tenant"], state], sample.value)
        yield family


REGISTRY.register(RunsByStateCollector())
