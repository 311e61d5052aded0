"""Sub-workflows on a real broker, router, executor and projector: a parent runs a child and goes
on with its outputs (across a router restart), a failing child fails the parent's step,
cancelling the parent cancels the child, and the depth bound stops a chain of calls.

One engine for the module (SWITCHYARD_MAX_SUBWORKFLOW_DEPTH 2), one tenant per test."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer

from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.control.commands import ControlSender, command
from services.router.subworkflows import child_run_id
from services.workflow.signing import generate_keypair
from tests.fixtures.database import create_database
from tests.fixtures.engine import Engine, EventLog, make_settings, register_tenant
from tests.fixtures.operators import signed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TENANTS = ("subok", "subfail", "subcancel", "subdepth")

CHILD = """
name: child
version: 1
trigger: {event: child.go}
steps:
  - {id: a, action: echo, inputs: {n: "${{ trigger.data.n }}"}}
  - {id: b, action: sleep, needs: [a], inputs: {seconds: "${{ trigger.data.pause }}"}}
"""
PARENT = """
name: parent
version: 1
trigger: {event: go}
steps:
  - id: call
    workflow: {name: child, inputs: {n: "${{ trigger.data.n }}", pause: "${{ trigger.data.pause }}"}}
  - {id: after, action: echo, needs: [call], inputs: {got: "${{ steps.call.output.outputs.a }}"}}
"""
FAILING_CHILD = """
name: child
version: 1
trigger: {event: child.go}
steps:
  - {id: a, action: fail, inputs: {error_kind: upstream_down, fail_attempts: 9}, retry: {max_attempts: 1}}
"""
# top (depth 0) -> mid (1) -> low (2) -> leaf (3: past the module's bound of 2)
CHAIN = [
    ("top", "mid"),
    ("mid", "low"),
    ("low", "leaf"),
]
LEAF = "name: leaf\nversion: 1\ntrigger: {event: leaf.go}\nsteps: [{id: a, action: noop}]\n"


def calling(name: str, callee: str) -> str:
    step = f"{{id: call, workflow: {{name: {callee}}}}}"
    return f"name: {name}\nversion: 1\ntrigger: {{event: {name}.go}}\nsteps: [{step}]\n"


class Module:
    """The module's engine, a router that can be restarted, and its history database."""

    def __init__(self, eng: Engine, database_url: str) -> None:
        self.eng = eng
        self.database_url = database_url
        self.router_stop = threading.Event()
        self.router: threading.Thread | None = None

    def start_router(self) -> None:
        from services.router.service import run_router

        stop_router = self.router_stop = threading.Event()
        either = threading.Event()

        def relay() -> None:
            while not self.eng.stop.wait(0.1) and not stop_router.is_set():
                pass
            either.set()

        threading.Thread(target=relay, daemon=True).start()
        before = len(self.eng.threads)
        ready = self.eng.start("router", lambda s, _stop, **kw: run_router(s, either, **kw), instance_id="r1")
        self.router = self.eng.threads[before]
        assert ready.wait(60), "router did not get its partitions"

    def restart_router(self) -> None:
        assert self.router is not None
        self.router_stop.set()
        self.router.join(60)
        assert not self.router.is_alive(), "router did not stop"
        self.start_router()

    def sql(self, query: str, *args: Any) -> Any:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(query, args).fetchone()
        return row[0] if row else None

    def wait_sql(self, query: str, expected: object, *args: Any, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        value: object = None
        while time.monotonic() < deadline:
            value = self.sql(query, *args)
            if value == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"{query} {args} = {value!r}, expected {expected!r} within {timeout_s}s")


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, database_admin_url: str, migrated_template: str) -> Iterator[Module]:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector

    unique = uuid.uuid4().hex[:10]
    database_url = create_database(database_admin_url, f"sy_test_{unique}", template=migrated_template)
    settings = make_settings(
        kafka_bootstrap, f"t{unique}", database_url=database_url, max_subworkflow_depth=2
    )
    ensure_topics(admin_client(settings), internal_specs(settings))
    private, public = generate_keypair()
    for tenant in TENANTS:  # before the router starts: its trigger subscription sees them at once
        register_tenant(settings, tenant, public)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"events-{unique}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([Topics(settings.topic_prefix).events])
    eng = Engine(settings, TENANTS[0], private, threading.Event(), EventLog(consumer))
    module = Module(eng, database_url)
    try:
        assert eng.start("projector", run_projector).wait(60)
        module.start_router()
        assert eng.start("executor", run_executor, instance_id="e1").wait(60)
        yield module
    finally:
        eng.stop.set()
        for thread in eng.threads:
            thread.join(30)
        consumer.close()


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def has(kind: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: kind in types(events)


def test_a_parent_runs_a_child_across_a_router_restart_and_goes_on_with_its_outputs(world: Module) -> None:
    eng, tenant = world.eng, "subok"
    eng.publish(CHILD, tenant=tenant)
    eng.publish(PARENT, tenant=tenant)
    parent = eng.run_id("parent", eng.trigger("go", {"n": 7, "pause": 2.0}, tenant=tenant), tenant=tenant)
    child = child_run_id(parent, "call", 1)
    # The child sleeps in step b: the router restarts while the parent waits for it.
    eng.wait_events(
        child, lambda evs: any(e["type"] == "step_scheduled" and e["step_id"] == "b" for e in evs)
    )
    world.restart_router()
    events = eng.wait_terminal([parent, child], timeout_s=90)
    assert types(events[child])[-1] == "run_succeeded"
    assert types(events[parent])[-1] == "run_succeeded"
    scheduled = next(e for e in events[parent] if e["type"] == "step_scheduled" and e["step_id"] == "call")
    assert scheduled["detail"]["child_run_id"] == child and scheduled["detail"]["workflow"] == "child"
    pending = events[child][0]
    assert pending["type"] == "run_pending"
    assert pending["detail"]["parent"]["run_id"] == parent and pending["detail"]["parent"]["depth"] == 1
    assert pending["detail"]["trigger"]["event_type"] == "child.go"
    succeeded = next(e for e in events[parent] if e["type"] == "step_succeeded" and e["step_id"] == "call")
    assert succeeded["detail"]["executor_id"] == "router:child"
    output = succeeded["detail"]["output"]
    assert (output["run_id"], output["version"], output["outputs"]["a"]) == (child, 1, {"n": 7})
    after = next(e for e in events[parent] if e["type"] == "step_scheduled" and e["step_id"] == "after")
    assert after["detail"]["inputs"] == {"got": {"n": 7}}
    # The projector shows both runs and the link between them.
    world.wait_sql("select state from runs where run_id = %s", "succeeded", child)
    world.wait_sql("select state from runs where run_id = %s", "succeeded", parent)
    link = "select detail->'parent'->>'run_id' from run_events where run_id = %s and type = 'run_pending'"
    assert world.sql(link, child) == parent
    assert world.sql("select run_id from runs where parent_run_id = %s", parent) == child


def test_a_failing_child_fails_the_parent_step(world: Module) -> None:
    eng, tenant = world.eng, "subfail"
    eng.publish(FAILING_CHILD, tenant=tenant)
    eng.publish(PARENT, tenant=tenant)
    parent = eng.run_id("parent", eng.trigger("go", {"n": 1, "pause": 0.0}, tenant=tenant), tenant=tenant)
    child = child_run_id(parent, "call", 1)
    events = eng.wait_terminal([parent, child])
    assert types(events[child])[-1] == "run_failed"
    assert types(events[parent])[-1] == "run_failed"
    failed = next(e for e in events[parent] if e["type"] == "step_failed")
    assert failed["step_id"] == "call" and failed["detail"]["error_kind"] == "child_failed"
    assert f"child run {child} (child v1) failed: step a: upstream_down" in failed["detail"]["error_message"]
    query = "select error_kind from steps where run_id = %s and step_id = 'call'"
    world.wait_sql(query, "child_failed", parent)


def test_cancelling_the_parent_cancels_its_running_child(world: Module) -> None:
    eng, tenant = world.eng, "subcancel"
    eng.publish(CHILD, tenant=tenant)
    eng.publish(PARENT, tenant=tenant)
    parent = eng.run_id("parent", eng.trigger("go", {"n": 1, "pause": 20.0}, tenant=tenant), tenant=tenant)
    child = child_run_id(parent, "call", 1)
    eng.wait_events(
        child, lambda evs: any(e["type"] == "step_scheduled" and e["step_id"] == "b" for e in evs)
    )
    operator = f"ops@{tenant}"
    sender = ControlSender(eng.settings)
    sender.send(signed(command("cancel", tenant, parent, operator, "not needed"), operator))
    sender.flush()
    events = eng.wait_terminal([parent, child])
    assert types(events[parent])[-1] == "run_cancelled"
    assert types(events[child])[-1] == "run_cancelled"
    cancelled = next(e for e in events[child] if e["type"] == "run_cancelled")
    assert cancelled["detail"]["requester"] == f"parent:{parent}"
    assert "not needed" in cancelled["detail"]["reason"]
    # The child's outcome still reaches the parent, which has ended: ignored, with the reason.
    ignored = eng.wait_events(parent, has("result_ignored"))
    assert next(e for e in ignored if e["type"] == "result_ignored")["detail"]["reason"] == "run_cancelled"


def test_a_chain_deeper_than_the_bound_fails_with_a_clear_kind(world: Module) -> None:
    eng, tenant = world.eng, "subdepth"
    eng.publish(LEAF, tenant=tenant)
    for name, callee in CHAIN:
        eng.publish(calling(name, callee), tenant=tenant)
    top = eng.run_id("top", eng.trigger("top.go", {}, tenant=tenant), tenant=tenant)
    mid = child_run_id(top, "call", 1)
    low = child_run_id(mid, "call", 1)
    events = eng.wait_terminal([top, mid, low])
    assert [types(events[r])[-1] for r in (top, mid, low)] == ["run_failed"] * 3
    too_deep = next(e for e in events[low] if e["type"] == "step_failed")
    assert too_deep["detail"]["error_kind"] == "subworkflow_too_deep"
    assert "nested 3 deep; the limit is 2" in too_deep["detail"]["error_message"]
    assert [e["detail"]["error_kind"] for e in events[top] if e["type"] == "step_failed"] == ["child_failed"]
    eng.log.pump(0.5)
    assert child_run_id(low, "call", 1) not in eng.log.by_run  # the leaf never ran
