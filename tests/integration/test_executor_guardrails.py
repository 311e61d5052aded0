"""Guardrails and firm.update_record on a real broker and a real PostgreSQL.

- firm.update_record applies once when the same command is delivered again (directly, twice
  concurrently, and as a duplicate record on the commands topic);
- permission denied over Kafka, with the tenant's scopes read from the tenants registry;
- the per-tenant external-call rate limit, measured at a local HTTP endpoint;
- the example client-onboarding workflow end to end through router and executor.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Unpack

import psycopg
import pytest
from confluent_kafka import Consumer, Producer

from services.actions.firm import UpdateRecord
from services.bus.topics import Topics
from services.contracts import serde
from services.contracts.records import StepCommand, StepResult
from services.executor import ActionRegistry, execute_command
from services.workflow.signing import generate_keypair
from tests.fixtures.engine import Engine, register_tenant
from tests.fixtures.kafka import consume_until
from tests.fixtures.records import StepCommandFields
from tests.integration.test_executor import Executor, Running, make_settings, read_results
from tests.unit.executor.helpers import command, message_of, output_of

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def rows(database_url: str, table: str = "firm_records") -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def create_client(**overrides: Unpack[StepCommandFields]) -> StepCommand:
    inputs = {"record_type": "client", "operation": "create", "fields": {"name": "Ada", "tier": 1}}
    fields: StepCommandFields = {"scopes": ["firm_data:write"], **overrides}
    return command("firm.update_record", inputs, **fields)


def firm_registry(database_url: str) -> ActionRegistry:
    return ActionRegistry.load(builtins=False, entry_points=False, extra=[UpdateRecord(database_url)])


def test_update_record_applies_once_when_the_same_command_is_redelivered(database_url: str) -> None:
    reg, cmd = firm_registry(database_url), create_client()

    async def deliver_twice() -> list[StepResult]:
        first = await execute_command(reg, cmd)  # e.g. committed to the DB, then the executor died
        second = await execute_command(reg, cmd)  # the same command, delivered again
        return [first, second]

    first, second = asyncio.run(deliver_twice())
    assert first["status"] == second["status"] == "succeeded", (first, second)
    assert first["output_json"] == second["output_json"]
    output = output_of(first)
    assert output["name"] == "Ada" and output["fields"] == {"name": "Ada", "tier": 1}
    assert len(rows(database_url)) == 1
    assert rows(database_url)[0][1] == output["id"]
    [effect] = rows(database_url, "applied_effects")
    assert effect[0] == cmd["idempotency_key"] and effect[3] == output


def test_concurrent_duplicates_apply_once(database_url: str) -> None:
    reg = firm_registry(database_url)
    cmd = create_client(idempotency_key="run-2:s1:1", run_id="run-2")

    async def race() -> list[StepResult]:
        return list(await asyncio.gather(*(execute_command(reg, cmd) for _ in range(5))))

    results = asyncio.run(race())
    assert {r["status"] for r in results} == {"succeeded"}
    assert len({r["output_json"] for r in results}) == 1
    assert len(rows(database_url)) == 1


def test_update_merges_fields_and_a_retry_is_a_new_effect(database_url: str) -> None:
    reg = firm_registry(database_url)
    created = output_of(asyncio.run(execute_command(reg, create_client())))
    update = {
        "record_type": "client",
        "operation": "update",
        "id": created["id"],
        "fields": {"status": "onboarded"},
    }
    for attempt in (1, 1, 2):  # a redelivery of attempt 1, then a retry (attempt 2): a new key
        cmd = command(
            "firm.update_record",
            update,
            scopes=["firm_data:write"],
            step_id="s2",
            attempt=attempt,
            idempotency_key=f"run-1:s2:{attempt}",
        )
        result = asyncio.run(execute_command(reg, cmd))
        assert result["status"] == "succeeded", result
    output = output_of(result)
    assert output["fields"] == {"name": "Ada", "tier": 1, "status": "onboarded"}
    assert output["version"] == 3  # create + attempt 1 (once) + attempt 2
    assert len(rows(database_url, "applied_effects")) == 3
    missing = {**update, "id": "nope"}
    result = asyncio.run(
        execute_command(
            reg, command("firm.update_record", missing, scopes=["firm_data:write"], idempotency_key="k")
        )
    )
    assert (result["error_kind"], result["retryable"]) == ("not_found", False)


def test_update_record_input_is_validated(database_url: str) -> None:
    reg = firm_registry(database_url)
    bad = command(
        "firm.update_record",
        {"record_type": "client", "operation": "update", "fields": {}},
        scopes=["firm_data:write"],
    )
    result = asyncio.run(execute_command(reg, bad))
    assert result["error_kind"] == "invalid_input" and "needs an id" in message_of(result)


# --- over Kafka ------------------------------------------------------------------------------


@pytest.fixture
def firm_env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("SWITCHYARD_FIRM_DATABASE_URL", database_url)
    return database_url


def started(kafka_bootstrap: str, unique: str, **tenant: Any) -> tuple[Executor, Running]:
    settings = make_settings(kafka_bootstrap, unique)
    register_tenant(settings, "acme", generate_keypair()[1], **tenant)
    running = Running(settings, "g1")  # default guardrails: the tenants registry
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    return Executor(settings, Topics(settings.topic_prefix), producer), running


def test_duplicate_command_records_apply_once_and_denied_commands_never_run(
    kafka_bootstrap: str, unique: str, firm_env: str, make_consumer: Callable[..., Consumer]
) -> None:
    ex, running = started(kafka_bootstrap, unique, scopes=["firm_data:write"])
    try:
        inputs = {"record_type": "client", "operation": "create", "fields": {"name": "Grace"}}
        first = ex.send("firm.update_record", inputs, scopes=["firm_data:write"], run_id="dup")
        ex.producer.flush(10)
        # The same command record again, as a redelivery presents it (say the first executor died
        # after the database commit, before committing its result to Kafka).
        ex.producer.produce(ex.topics.commands, serde.encode("StepCommand", first), key=first["run_id"])
        undeclared = ex.send("firm.update_record", inputs, scopes=[], run_id="undeclared")
        ex.producer.flush(10)
        consumer = make_consumer([ex.topics.inbox])
        messages = consume_until(consumer, lambda seen: len(seen) >= 3, timeout_s=60)
    finally:
        running.stop()
    by_run: dict[str, list[dict[str, Any]]] = {}
    for msg in messages:
        result = serde.decode_inbox(msg.value())[1]
        by_run.setdefault(result["run_id"], []).append(result)
    pair = by_run["dup"]
    assert [r["status"] for r in pair] == ["succeeded", "succeeded"], pair
    assert pair[0]["output_json"] == pair[1]["output_json"]
    [denied] = by_run[undeclared["run_id"]]
    assert (denied["error_kind"], denied["retryable"]) == ("permission_denied", False)
    assert len(rows(firm_env)) == 1  # once for the key, nothing for the denied command


def test_tenant_without_the_grant_is_denied_over_kafka(
    kafka_bootstrap: str, unique: str, firm_env: str, make_consumer: Callable[..., Consumer]
) -> None:
    ex, running = started(kafka_bootstrap, unique, scopes=["firm_data:read"])
    try:
        inputs = {"record_type": "client", "operation": "create", "fields": {"name": "Linus"}}
        cmd = ex.send("firm.update_record", inputs, scopes=["firm_data:write"])
        result = read_results(make_consumer, ex, 1)[cmd["run_id"]][1]
    finally:
        running.stop()
    assert (result["error_kind"], result["retryable"]) == ("permission_denied", False)
    assert "not granted" in result["error_message"]
    with psycopg.connect(firm_env) as conn:  # never ran: not even its tables were created
        assert conn.execute("SELECT to_regclass('firm_records')").fetchone() == (None,)


class Stamps:
    """A local HTTP endpoint that records when each request arrived."""

    def __init__(self) -> None:
        self.arrivals: list[float] = []
        lock = threading.Lock()
        stamps = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    stamps.arrivals.append(time.monotonic())
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def stamps() -> Iterator[Stamps]:
    server = Stamps()
    yield server
    server.httpd.shutdown()


RATE = 10.0
CALLS = 40


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_external_call_rate_limit_holds_over_kafka(
    kafka_bootstrap: str, unique: str, stamps: Stamps, make_consumer: Callable[..., Consumer]
) -> None:
    ex, running = started(kafka_bootstrap, unique, external_call_rate=RATE)
    try:
        sent = [ex.send("http.request", {"url": stamps.url}) for _ in range(CALLS)]
        results = read_results(make_consumer, ex, CALLS, timeout_s=90)
    finally:
        running.stop()
    assert {r["status"] for _, r in results.values()} == {"succeeded"}
    assert len(stamps.arrivals) == len(sent)
    arrivals = sorted(stamps.arrivals)
    # Burst of RATE (one second's worth), then RATE per second: (CALLS - RATE) / RATE seconds.
    expected = (CALLS - RATE) / RATE
    span = arrivals[-1] - arrivals[0]
    print(f"rate limit: {CALLS} calls at {RATE}/s took {span:.3f}s (expected {expected:.3f}s)")
    assert expected * 0.9 <= span <= expected + 1.5, f"{CALLS} calls took {span:.2f}s, expected {expected}"
    for i, start in enumerate(arrivals):  # never more than burst + rate in any one-second window
        assert sum(1 for t in arrivals[i:] if t < start + 1.0) <= 2 * RATE + 1


ONBOARDING_TRIGGER = {
    "status": "signed",
    "client": {"name": "Ada Lovelace", "email": "ada@example.com"},
    "partner": "babbage",
    "engagement_id": "E-1",
}


def test_client_onboarding_workflow_writes_firm_records(
    engine_factory: Callable[..., Engine], firm_env: str
) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    eng = engine_factory(tenant_limits={"scopes": ["firm_data:write", "email:send"]})
    assert eng.start("router", run_router, instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)
    eng.publish((EXAMPLES / "client-onboarding.yaml").read_text())
    key = eng.trigger("crm.engagement_signed", ONBOARDING_TRIGGER)
    run_id = eng.run_id("client-onboarding", key)
    events = eng.wait_terminal([run_id], timeout_s=90)[run_id]
    assert events[-1]["type"] == "run_succeeded", [(e["type"], e.get("detail")) for e in events]
    records = {(r[2], r[1]): r for r in rows(firm_env)}
    [client] = [r for (kind, _), r in records.items() if kind == "client"]
    [folder] = [r for (kind, _), r in records.items() if kind == "document_folder"]
    assert client[3] == {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "partner": "babbage",
        "engagement_id": "E-1",
        "status": "onboarded",
    }
    assert client[4] == 2  # created, then updated once
    assert folder[3] == {"client_id": client[1], "path": "Clients/Ada Lovelace/E-1"}
