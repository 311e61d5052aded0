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
