"""Firm context on a real broker and PostgreSQL: a definition's ``context:`` reads firm records once,
at run start, through the executor's read actions; steps see them as ``context.<name>``.

One engine (router + executor) for the module and one firm database; each test has its own
tenant, registered before the engine starts (a tenant topic created later would wait for the next
metadata refresh), with or without the ``firm_data:read`` grant.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer
from psycopg.types.json import Jsonb

from services.actions.firm import SCHEMA, GetRecord, GetRecordInput, Query, QueryInput
from services.bus.topics import admin_client, ensure_topics, internal_specs
from services.control.commands import ControlSender, command
from services.executor.plugins import ActionContext
from services.observability.logs import bind
from services.workflow.signing import generate_keypair
from tests.fixtures.database import create_database, drop_database
from tests.fixtures.engine import Engine, EventLog, make_settings, register_tenant, router_until
from tests.fixtures.operators import signed

pytestmark = pytest.mark.integration

READER, REPLAYER, HISTORY, NO_GRANT, BIG = "ctxread", "ctxreplay", "ctxhistory", "ctxnogrant", "ctxbig"

CONTEXT_WORKFLOW = """
name: onboard
version: 1
trigger: {event: engagement.opened}
scopes: [firm_data:read]
context:
  client:
    action: firm.get_record
    inputs: {record_type: client, id: "${{ trigger.data.client_id }}"}
  partners:
    action: firm.query
    inputs: {record_type: partner, where: {office: "${{ trigger.data.office }}"}, limit: 10}
steps:
  - id: greet
    action: echo
    when: context.client.status == "active"
    inputs:
      name: "${{ context.client.name }}"
      partners: "${{ context.partners.records.map(p, p.fields.name) }}"
      truncated: "${{ context.partners.truncated }}"
"""

REPLAY_WORKFLOW = """
name: letter
version: 1
trigger: {event: letter.requested}
scopes: [firm_data:read]
context:
  client: {action: firm.get_record, inputs: {record_type: client, id: "${{ trigger.data.client_id }}"}}
steps:
  - id: call
    action: fail
    inputs: {error_kind: upstream_down, fail_attempts: 1}
    retry: {max_attempts: 1}
  - {id: write, action: echo, needs: [call], inputs: {dear: "${{ context.client.name }}"}}
"""

NOTE_WORKFLOW = """
name: note
version: 1
trigger: {event: note.requested}
scopes: [firm_data:read]
context:
  client: {action: firm.get_record, inputs: {record_type: client, id: "${{ trigger.data.client_id }}"}}
steps:
  - {id: write, action: echo, inputs: {dear: "${{ context.client.name }}"}}
"""

BIG_WORKFLOW = """
name: everything
version: 1
trigger: {event: report.requested}
scopes: [firm_data:read]
context:
  documents: {action: firm.query, inputs: {record_type: document, limit: 10}}
steps:
  - {id: report, action: echo, inputs: {n: "${{ context.documents.count }}"}}
"""


class World:
    """The module's engine (router, executor, projector), its history database and the firm's."""

    def __init__(
        self, engine: Engine, firm_url: str, history_url: str, restart_router: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.firm_url = firm_url
        self.history_url = history_url
        self.restart_router = restart_router

    def put(self, tenant: str, record_type: str, record_id: str, fields: dict[str, Any]) -> None:
        with psycopg.connect(self.firm_url) as conn:
            conn.execute(
                "INSERT INTO firm_records (tenant, id, record_type, fields, created_by, updated_by)"
                " VALUES (%s, %s, %s, %s, 'test', 'test')"
                " ON CONFLICT (tenant, id)"
                " DO UPDATE SET fields = excluded.fields, version = firm_records.version + 1",
                [tenant, record_id, record_type, Jsonb(fields)],
            )

    def replay(self, tenant: str, run_id: str, step: str | None = None) -> None:
        requester = f"ops@{tenant}"
        sender = ControlSender(self.engine.settings)
        sender.send(
            signed(command("replay_run", tenant, run_id, requester, "again", step_id=step), requester)
        )
        sender.flush()

    def wait_sql(
        self, statement: str, args: tuple[Any, ...], expected: object, timeout_s: float = 60
    ) -> None:
        deadline = time.monotonic() + timeout_s
        value: object = None
        while time.monotonic() < deadline:
            with psycopg.connect(self.history_url) as conn:
                value = conn.execute(statement, args).fetchall()
            if value == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"{statement} {args} = {value!r}, expected {expected!r} within {timeout_s}s")

    def run(self, tenant: str, workflow: str, event: str, data: Any) -> tuple[str, list[dict[str, Any]]]:
        eng = self.engine
        run_id = eng.run_id(workflow, eng.trigger(event, data, tenant=tenant), tenant=tenant)
        return run_id, eng.wait_terminal([run_id], timeout_s=90)[run_id]


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, database_admin_url: str, migrated_template: str) -> Iterator[World]:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    unique = uuid.uuid4().hex[:10]
    firm_url = create_database(database_admin_url, f"sy_firm_{unique}")
    history_url = create_database(database_admin_url, f"sy_hist_{unique}", template=migrated_template)
    with psycopg.connect(firm_url) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
    settings = make_settings(kafka_bootstrap, f"t{unique}", database_url=history_url)
    ensure_topics(admin_client(settings), internal_specs(settings))
    private, public = generate_keypair()
    for tenant in (READER, REPLAYER, HISTORY, BIG):
        register_tenant(settings, tenant, public, scopes=["firm_data:read"])
    register_tenant(settings, NO_GRANT, public, scopes=["firm_data:write"])
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"events-{unique}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([f"{settings.topic_prefix}.events"])
    engine = Engine(settings, READER, private, threading.Event(), EventLog(consumer))
    stop_r1 = threading.Event()

    def restart_router() -> None:
        stop_r1.set()
        for thread in engine.threads:
            if thread.name == "router":
                thread.join(60)
                assert not thread.is_alive()
        assert engine.start("router-2", run_router, instance_id="r2").wait(60)

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SWITCHYARD_FIRM_DATABASE_URL", firm_url)  # the firm actions read it at each call
        try:
            assert engine.start("projector", run_projector).wait(60)
            assert engine.start("router", router_until(stop_r1), instance_id="r1").wait(60)
            assert engine.start("executor", run_executor, instance_id="e1").wait(60)
            for tenant, text in ((READER, CONTEXT_WORKFLOW), (NO_GRANT, CONTEXT_WORKFLOW)):
                engine.publish(text, tenant=tenant)
            engine.publish(REPLAY_WORKFLOW, tenant=REPLAYER)
            engine.publish(NOTE_WORKFLOW, tenant=HISTORY)
            engine.publish(BIG_WORKFLOW, tenant=BIG)
            yield World(engine, firm_url, history_url, restart_router)
        finally:
            engine.stop.set()
            for thread in engine.threads:
                thread.join(30)
            consumer.close()
            drop_database(database_admin_url, f"sy_firm_{unique}")
            drop_database(database_admin_url, f"sy_hist_{unique}")


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def scheduled(events: list[dict[str, Any]], step_id: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "step_scheduled" and e["step_id"] == step_id]


def output(events: list[dict[str, Any]], step_id: str) -> Any:
    return [e for e in events if e["type"] == "step_succeeded" and e["step_id"] == step_id][-1]["detail"][
        "output"
    ]


def test_a_run_reads_firm_records_into_its_context_and_a_later_step_uses_them(world: World) -> None:
    world.put(READER, "client", "c-1", {"name": "Ada Lovelace", "status": "active"})
    world.put(NO_GRANT, "client", "c-1", {"name": "Not yours", "status": "active"})  # another tenant's
    for i, office in enumerate(["london", "london", "paris"]):
        world.put(READER, "partner", f"p-{i}", {"name": f"Partner {i}", "office": office})
    _, events = world.run(READER, "onboard", "engagement.opened", {"client_id": "c-1", "office": "london"})
    assert types(events)[-1] == "run_succeeded"
    # Visible in history as the run's context: read first, by the read actions.
    reads = [e for e in events if e["type"] == "step_scheduled"][:2]
    assert [(e["step_id"], e["detail"]["action"]) for e in reads] == [
        ("context.client", "firm.get_record"),
        ("context.partners", "firm.query"),
    ]
    assert reads[0]["detail"]["inputs"] == {"record_type": "client", "id": "c-1"}
    greet = scheduled(events, "greet")[0]
    assert greet["seq"] > max(
        e["seq"] for e in events if e["type"] == "step_succeeded" and e["step_id"].startswith("context.")
    )
    assert output(events, "greet") == {
        "name": "Ada Lovelace",
        "partners": ["Partner 0", "Partner 1"],
        "truncated": False,
    }


def test_a_replay_keeps_the_context_even_after_the_record_changed_and_the_router_restarted(
    world: World,
) -> None:
    world.put(REPLAYER, "client", "c-7", {"name": "Grace Hopper"})
    run_id, events = world.run(REPLAYER, "letter", "letter.requested", {"client_id": "c-7"})
    assert types(events)[-1] == "run_failed"
    world.put(REPLAYER, "client", "c-7", {"name": "Someone Else"})
    world.restart_router()  # the run's state, context included, comes back from the changelog
    world.replay(REPLAYER, run_id)
    events = world.engine.wait_events(run_id, lambda evs: "run_succeeded" in types(evs), timeout_s=90)
    assert next(e for e in events if e["type"] == "run_replayed")["detail"]["steps"] == ["call"]
    assert len(scheduled(events, "context.client")) == 1  # never read again
    assert output(events, "write") == {"dear": "Grace Hopper"}  # what the run read at its start


def test_a_replay_of_a_run_read_back_from_postgresql_keeps_the_context_it_read(world: World) -> None:
    """A succeeded run keeps no replay state in the router: its replay is rebuilt from the
    history, where the projector stored the context read like any step."""
    world.put(HISTORY, "client", "c-3", {"name": "Mary Somerville"})
    run_id, events = world.run(HISTORY, "note", "note.requested", {"client_id": "c-3"})
    assert types(events)[-1] == "run_succeeded"
    world.wait_sql(
        "SELECT step_id, state, output FROM steps WHERE run_id = %s ORDER BY step_id",
        (run_id,),
        [
            ("context.client", "succeeded", output(events, "context.client")),
            ("write", "succeeded", {"dear": "Mary Somerville"}),
        ],
    )
    world.put(HISTORY, "client", "c-3", {"name": "Someone Else"})
    world.replay(HISTORY, run_id, step="write")
    events = world.engine.wait_events(
        run_id, lambda evs: types(evs).count("run_succeeded") == 2, timeout_s=90
    )
    assert len(scheduled(events, "context.client")) == 1 and len(scheduled(events, "write")) == 2
    assert output(events, "write") == {"dear": "Mary Somerville"}


def test_a_tenant_without_the_read_grant_is_refused_before_anything_is_read(world: World) -> None:
    _, events = world.run(NO_GRANT, "onboard", "engagement.opened", {"client_id": "c-1", "office": "london"})
    # Both reads are denied; the one reported second finds the run already failed (ignored).
    end = next(e for e in events if e["type"] == "run_failed")
    assert end["detail"]["error_kind"] == "permission_denied"
    assert end["detail"]["step_id"] in ("context.client", "context.partners")
    assert "not granted ['firm_data:read']" in end["detail"]["error_message"]
    assert scheduled(events, "greet") == []  # no step ran without its context


def test_an_oversized_query_fails_the_run_with_result_too_large_not_retried(world: World) -> None:
    for i in range(3):  # 3 x 50 KB of fields: past the 128 KiB default of SWITCHYARD_FIRM_READ_MAX_BYTES
        world.put(BIG, "document", f"d-{i}", {"text": "x" * 50_000})
    _, events = world.run(BIG, "everything", "report.requested", {})
    end = next(e for e in events if e["type"] == "run_failed")
    assert end["detail"]["step_id"] == "context.documents"
    assert end["detail"]["error_kind"] == "result_too_large"
    assert "SWITCHYARD_FIRM_READ_MAX_BYTES" in end["detail"]["error_message"]
    assert len(scheduled(events, "context.documents")) == 1  # not retried: the same read is as large
    assert scheduled(events, "report") == []


def test_reads_never_create_the_tables_and_find_nothing_where_nothing_was_written(database_url: str) -> None:
    """The firm database may be a replica or the role read-only: a read creates nothing."""
    ctx = ActionContext(
        tenant=READER,
        run_id="r",
        step_id="context.client",
        attempt=1,
        idempotency_key="r:context.client:1",
        deadline=time.time() + 30,
        correlation_id="c",
        log=bind(logging.getLogger("test")),
    )
    missing = GetRecordInput(record_type="client", id="c-1", missing_ok=True)
    assert asyncio.run(GetRecord(database_url).run(ctx, missing)) == {
        "found": False,
        "id": "c-1",
        "record_type": "client",
    }
    found = asyncio.run(Query(database_url).run(ctx, QueryInput(record_type="client")))
    assert (found["count"], found["truncated"], found["records"]) == (0, False, [])
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT to_regclass('firm_records')").fetchone() == (None,)
