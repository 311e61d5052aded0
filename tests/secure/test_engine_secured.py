"""The whole engine on the secured broker, each service as its own principal under its ACLs only."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from services.bus.clients import plain_producer_config
from services.bus.fetch import consume_ready
from services.config import Settings
from services.contracts import serde
from services.devinfra.kafka_secure import ADMIN
from services.registry.publishing import publish_signed
from services.router.records import run_id_for
from services.workflow.loader import load_definition_text
from services.workflow.signing import private_key_from_b64, sign_definition
from tests.secure.conftest import Secured

pytestmark = pytest.mark.integration

CHAIN = """
name: secured-chain
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, inputs: {msg: "${{ trigger.data.msg }}"}}
  - {id: b, action: echo, needs: [a], inputs: {prev: "${{ steps.a.output.msg }}"}}
"""
TERMINAL = {"run_succeeded", "run_failed", "run_cancelled"}


@pytest.fixture
def services(
    secured: Secured, database_url: str
) -> Iterator[Callable[[str, Callable[..., None], Settings], None]]:
    """Starts a service thread with its own settings; waits for its assignment; stops them all."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def start(name: str, fn: Callable[..., None], settings: Settings) -> None:
        ready = threading.Event()

        def target() -> None:
            try:
                fn(settings, stop, ready=ready)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 90
        while not ready.is_set():
            assert not errors, f"{name} failed under its ACLs: {errors[0]!r}"
            assert time.monotonic() < deadline, f"{name} got no partitions within 90 s"
            ready.wait(0.2)

    yield start
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not errors, f"a service failed under its ACLs: {errors[0]!r}"


def publish(secured: Secured) -> None:
    definition = load_definition_text(CHAIN, filename="secured.yaml")
    signed = sign_definition(
        definition, tenant="acme", key_id="k1", private_key=private_key_from_b64(secured.private_key)
    )
    publish_signed(secured.admin, signed, "tests")


def history(secured: Secured, run_id: str, timeout_s: float = 90) -> list[dict[str, Any]]:
    """The run's events until its terminal one, read back as the admin."""
    consumer = Consumer(
        {
            **secured.client(ADMIN),
            "group.id": f"events-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([secured.topics.events])
    events: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for msg in consume_ready(consumer, 100, 0.5):
                if msg.error():
                    continue
                _, event = serde.decode(msg.value(), expected="RunEvent")
                if event["run_id"] == run_id:
                    events.append(event)
            if any(e["type"] in TERMINAL for e in events):
                return events
        raise AssertionError(
            f"run {run_id} did not finish within {timeout_s}s: {[e['type'] for e in events]}"
        )
    finally:
        consumer.close()


def projected_state(database_url: str, run_id: str, timeout_s: float = 60) -> str:
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(database_url) as conn:
                row = conn.execute("select state from runs where run_id = %s", (run_id,)).fetchone()
            state = row[0] if row else None
        except psycopg.errors.UndefinedTable:  # the projector has not migrated yet
            state = None
        if state in {"succeeded", "failed", "cancelled"}:
            return str(state)
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} projected as {state!r} after {timeout_s}s")


def test_the_engine_runs_a_workflow_with_one_principal_per_service(
    secured: Secured, database_url: str, services: Callable[[str, Callable[..., None], Settings], None]
) -> None:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    publish(secured)
    services("router", run_router, secured.role("router", instance_id="r1"))
    services("executor", run_executor, secured.role("executor", instance_id="e1"))
    services("projector", run_projector, secured.role("projector", database_url=database_url))

    key = uuid.uuid4().hex
    trigger = {
        "event_type": "go",
        "data_json": json.dumps({"msg": "hello"}),
        "idempotency_key": key,
        "correlation_id": None,
        "occurred_at": int(time.time() * 1000),
    }
    tenant = Producer(plain_producer_config(secured.settings("acme")))  # the tenant's own principal
    tenant.produce(
        secured.topics.tenant_triggers("acme"), key=key, value=serde.encode("TriggerEvent", trigger)
    )
    assert tenant.flush(30) == 0

    run_id = run_id_for("acme", "secured-chain", key)
    events = history(secured, run_id)
    assert [e["type"] for e in events][-1] == "run_succeeded", [e["type"] for e in events]
    assert [e["step_id"] for e in events if e["type"] == "step_succeeded"] == ["a", "b"]
    assert projected_state(database_url, run_id) == "succeeded"
