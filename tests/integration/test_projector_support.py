"""Helpers (no tests) shared by the projector integration tests: RunEvents, producing, waiting."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from confluent_kafka import Producer

from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.contracts.serde import encode
from services.projector.runner import Projector

T = TypeVar("T")
BASE_MS = 1_760_000_000_000


def settings_for(kafka_bootstrap: str, database_url: str, unique: str, partitions: int = 3) -> Settings:
    return Settings(
        topic_prefix=f"t{unique}",
        kafka_bootstrap_servers=kafka_bootstrap,
        database_url=database_url,
        internal_partitions=partitions,
    )


def create_events_topic(settings: Settings) -> str:
    topic = Topics(settings.topic_prefix).events
    ensure_topics(admin_client(settings), [s for s in internal_specs(settings) if s.name == topic])
    return topic


def create_projector_topics(settings: Settings) -> tuple[str, str]:
    """The events and dlq topics (the projector reads both); returns their names."""
    topics = Topics(settings.topic_prefix)
    wanted = {topics.events, topics.dlq}
    ensure_topics(admin_client(settings), [s for s in internal_specs(settings) if s.name in wanted])
    return topics.events, topics.dlq


def control_command(
    run_id: str | None,
    *,
    kind: str = "replay_run",
    requester: str = "ops",
    tenant: str = "acme",
    reason: str = "upstream fixed",
    step_id: str | None = None,
    command_id: str | None = None,
) -> dict[str, Any]:
    """A ``ControlCommand`` record as the control CLI sends it."""
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "kind": kind,
        "requester": requester,
        "tenant": tenant,
        "run_id": run_id,
        "step_id": step_id,
        "reason": reason,
        "correlation_id": f"cmd-corr-{uuid.uuid4().hex[:6]}",
        "issued_at": BASE_MS,
        "filter_json": None,
        "dry_run": False,
    }


def dead_letter_record(
    error_kind: str,
    message: str,
    *,
    original_topic: str | None = None,
    original_value: bytes | None = None,
    service: str = "router.intake",
    tenant: str | None = "acme",
    dlq_id: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    """A ``DeadLetter`` record the way the engine dead-letters an input."""
    return {
        "dlq_id": dlq_id or str(uuid.uuid4()),
        "service": service,
        "error_kind": error_kind,
        "error_message": message,
        "original_topic": original_topic,
        "original_partition": 0 if original_topic else None,
        "original_offset": 11 if original_topic else None,
        "original_key": b"key" if original_topic else None,
        "original_value": original_value,
        "attempt": None,
        "tenant": tenant,
        "correlation_id": "dl-corr",
        "run_id": None,
        "step_id": None,
        "failed_at": BASE_MS + 500,
        **more,
    }


def control_refusal(settings: Settings, cmd: dict[str, Any], refusal: str) -> bytes:
    """A dead letter of a control command refused before it reached a run (encoded)."""
    record = dead_letter_record(
        "control_refused",
        refusal,
        original_topic=Topics(settings.topic_prefix).control,
        original_value=encode("ControlCommand", cmd),
        tenant=cmd["tenant"],
    )
    return encode("DeadLetter", record)


class RunHistory:
    """Builds the events of one run the way the router emits them (seq 1.. without gaps)."""

    def __init__(self, tenant: str = "acme", workflow: str = "orders", version: int = 3) -> None:
        self.run_id = str(uuid.uuid4())
        self.tenant, self.workflow, self.version = tenant, workflow, version
        self.correlation_id = f"corr-{self.run_id[:8]}"
        self.events: list[dict[str, Any]] = []

    def add(
        self,
        type_: str,
        *,
        state: str | None = None,
        step_id: str | None = None,
        attempt: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        seq = len(self.events) + 1
        record = {
            "event_id": str(uuid.uuid5(uuid.UUID(self.run_id), str(seq))),
            "run_id": self.run_id,
            "tenant": self.tenant,
            "workflow": self.workflow,
            "version": self.version,
            "seq": seq,
            "type": type_,
            "step_id": step_id,
            "attempt": attempt,
            "state": state,
            "at": BASE_MS + seq * 1000,
            "correlation_id": self.correlation_id,
            "detail_json": json.dumps(detail) if detail is not None else None,
        }
        self.events.append(record)
        return record

    def at(self, seq: int) -> int:
        return BASE_MS + seq * 1000

    # -- typical sequences ------------------------------------------------------------------

    def pending(self, key: str = "order-1", data: dict[str, Any] | None = None) -> RunHistory:
        trigger = {"event_type": "order.created", "data": data or {"order": 42}, "idempotency_key": key}
        self.add("run_pending", state="pending", detail={"trigger": trigger, "source": "intake"})
        return self

    def started(self) -> RunHistory:
        self.add("run_started", state="running")
        return self

    def scheduled(self, step: str, attempt: int = 1, inputs: dict[str, Any] | None = None) -> RunHistory:
        detail = {
            "action": f"http.{step}",
            "inputs": inputs or {"step": step},
            "idempotency_key": f"{self.run_id}:{step}:{attempt}",
            "deadline": BASE_MS + 60_000,
        }
        self.add("step_scheduled", state="running", step_id=step, attempt=attempt, detail=detail)
        return self

    def succeeded(self, step: str, attempt: int = 1, output: Any = None) -> RunHistory:
        seq = len(self.events) + 1
        detail = {
            "output": output if output is not None else {"ok": step},
            "started_at": self.at(seq) - 500,
            "finished_at": self.at(seq) - 100,
            "executor_id": "exec-1",
        }
        self.add("step_succeeded", state="succeeded", step_id=step, attempt=attempt, detail=detail)
        return self

    def failed(self, step: str, attempt: int = 1, error_kind: str = "declined") -> RunHistory:
        detail = {"error_kind": error_kind, "error_message": f"{step} said no", "executor_id": "exec-2"}
        self.add("step_failed", state="failed", step_id=step, attempt=attempt, detail=detail)
        return self

    def run_failed(self, error_kind: str = "declined") -> RunHistory:
        self.add("run_failed", state="failed", detail={"error_kind": error_kind, "error_message": "no"})
        return self

    def control(self, cmd: dict[str, Any], refusal: str | None = None) -> RunHistory:
        """``control_accepted`` (or ``control_refused`` with ``refusal``) of command ``cmd``."""
        detail = {
            "command_id": cmd["command_id"],
            "kind": cmd["kind"],
            "requester": cmd["requester"],
            "reason": cmd["reason"],
            "step_id": cmd["step_id"],
            "command_correlation_id": cmd["correlation_id"],
        }
        if refusal is not None:
            detail["refusal"] = refusal
        self.add("control_refused" if refusal else "control_accepted", detail=detail)
        return self

    def replayed(self, cmd: dict[str, Any], steps: list[str], replay: int = 1) -> RunHistory:
        """An accepted replay: ``control_accepted``, ``run_replayed`` and one ``step_reset`` per step."""
        self.control(cmd)
        detail = {
            "command_id": cmd["command_id"],
            "requester": cmd["requester"],
            "reason": cmd["reason"],
            "replay": replay,
            "steps": steps,
        }
        self.add("run_replayed", state="pending", detail=detail)
        for step in steps:
            self.add("step_reset", state="pending", step_id=step, detail={"command_id": cmd["command_id"]})
        return self


def produce(settings: Settings, topic: str, records: list[tuple[bytes | None, bytes]]) -> dict[int, int]:
    """Produce ``(key, value)`` records in one Kafka transaction; returns partition → last offset + 1."""
    producer = Producer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "transactional.id": f"tx-{uuid.uuid4()}"}
    )
    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        assert err is None, err
        ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    producer.init_transactions(30)
    producer.begin_transaction()
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    producer.commit_transaction(30)
    producer.flush(10)
    return ends


def encoded(*histories: RunHistory) -> list[tuple[bytes | None, bytes]]:
    """Every event of ``histories``, keyed by run id, interleaved run by run in seq order."""
    out: list[tuple[bytes | None, bytes]] = []
    longest = max(len(h.events) for h in histories)
    for i in range(longest):
        for h in histories:
            if i < len(h.events):
                out.append((h.run_id.encode(), encode("RunEvent", h.events[i])))
    return out


def wait_for(condition: Callable[[], T], timeout_s: float = 20.0, what: str = "condition") -> T:
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout_s}s (last: {last!r})")
        time.sleep(0.1)
        last = condition()
    return last


@contextmanager
def running_projector(settings: Settings, group_id: str | None = None, **kwargs: Any) -> Iterator[Projector]:
    """A projector in a thread; stopped (and its failure, if any, re-raised) on exit."""
    projector = Projector(settings, group_id=group_id, poll_timeout_s=0.2, **kwargs)
    stop, ready = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            projector.run(stop, ready)
        except BaseException as exc:
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=target, name="projector", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "projector never got its assignment"
        if failure:
            raise failure[0]
        yield projector
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "projector did not stop"
    if failure:
        raise failure[0]


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


# -- typical runs -------------------------------------------------------------------------


def succeeded_with_retry() -> RunHistory:
    h = RunHistory(tenant="acme", workflow="orders").pending(key="order-7", data={"order": 7}).started()
    h.scheduled("fetch")  # 3
    h.add(  # 4
        "step_retrying",
        state="retrying",
        step_id="fetch",
        attempt=1,
        detail={"error_kind": "http_503", "error_message": "upstream busy", "retry_at": 0, "next_attempt": 2},
    )
    h.add("run_retrying", state="retrying")  # 5
    h.scheduled("fetch", attempt=2)  # 6
    h.add("run_running", state="running")  # 7
    h.succeeded("fetch", attempt=2, output={"rows": 3})  # 8
    h.scheduled("notify")  # 9
    h.add("result_ignored", step_id="fetch", attempt=1, detail={"reason": "stale attempt"})  # 10
    h.succeeded("notify")  # 11
    h.add("step_skipped", state="skipped", step_id="cleanup", detail={"reason": "when: false"})  # 12
    h.add("run_succeeded", state="succeeded")  # 13
    return h


def failed_on_timeout() -> RunHistory:
    h = RunHistory(tenant="globex", workflow="billing").pending(key="inv-1").started()
    h.scheduled("charge")  # 3
    h.add("control_refused", detail={"command": "pause", "reason": "unsupported"})  # 4
    h.add("step_timed_out", state="failed", step_id="charge", attempt=1, detail={"deadline": 123})  # 5
    h.add(  # 6
        "run_failed",
        state="failed",
        detail={"step_id": "charge", "error_kind": "timeout", "error_message": "charge timed out"},
    )
    return h


def cancelled() -> RunHistory:
    h = RunHistory(tenant="acme", workflow="billing").pending(key="inv-2").started()
    h.scheduled("charge")  # 3
    h.add("step_cancelled", state="cancelled", step_id="charge", attempt=1)  # 4
    h.add("run_cancelled", state="cancelled", detail={"requester": "ops", "reason": "customer asked"})  # 5
    return h
