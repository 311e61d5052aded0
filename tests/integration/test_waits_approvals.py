"""Wait and approval steps on a real broker and PostgreSQL: the router keeps them (no executor),
they survive a router restart (the timer is rebuilt from the run's state and fires once), an
approval decided with ``switchyard approve`` lands after a restart, a rejection fails the run,
and a cancel ends a waiting run.

One engine (router, executor, projector) for the module; each test registers a tenant of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer

from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.control.commands import ControlSender, command
from services.workflow.signing import generate_keypair
from tests.fixtures.database import create_database, drop_database
from tests.fixtures.engine import Engine, EventLog, make_settings, register_tenant, router_until
from tests.fixtures.infra import _HANDED_OUT
from tests.fixtures.operators import signed, write_key

pytestmark = pytest.mark.integration

WAIT = """
name: pause
version: 1
trigger: {event: pause}
steps:
  - {id: nap, wait: {duration: 1}}
  - {id: after, action: echo, needs: [nap], inputs: {woke: "${{ steps.nap.output.waited_until }}"}}
"""
LONG_WAIT = """
name: long-pause
version: 1
trigger: {event: long}
steps:
  - {id: nap, wait: {until: "trigger.data.until"}}
"""
APPROVAL = """
name: invoice
version: 1
trigger: {event: invoice}
steps:
  - {id: ask, approval: {prompt: "Send the invoice?", timeout: 600}}
  - {id: send, action: echo, needs: [ask], inputs: {by: "${{ steps.ask.output.by }}"}}
"""


class Routers:
    """The module's router, restartable: each generation stops on its own event (or the engine's)."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.generation = 0
        self.stop_current = threading.Event()

    def start(self) -> None:
        self.generation += 1
        self.stop_current = threading.Event()
        name = f"router-{self.generation}"
        run = router_until(self.stop_current)
        assert self.eng.start(name, run, instance_id=f"r{self.generation}").wait(60), name

    def restart(self) -> None:
        self.stop_current.set()
        for thread in self.eng.threads:
            if thread.name == f"router-{self.generation}":
                thread.join(60)
                assert not thread.is_alive(), "the router did not stop"
        self.start()


@pytest.fixture(scope="module")
def setup(
    kafka_bootstrap: str, database_admin_url: str, migrated_template: str
) -> Iterator[tuple[Engine, Routers, str]]:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector

    unique = uuid.uuid4().hex[:10]
    _HANDED_OUT.add(unique)  # its topics are deleted after the session
    db_name = f"sy_test_{unique}"
    url = create_database(database_admin_url, db_name, template=migrated_template)
    settings = make_settings(kafka_bootstrap, f"t{unique}", database_url=url)
    ensure_topics(admin_client(settings), internal_specs(settings))
    private, public = generate_keypair()
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
    eng = Engine(settings, "unused", private, threading.Event(), EventLog(consumer))
    eng.public_key = public  # type: ignore[attr-defined]
    routers = Routers(eng)
    try:
        routers.start()
        assert eng.start("executor", run_executor, instance_id="e1").wait(60)
        assert eng.start("projector", run_projector).wait(60)
        yield eng, routers, url
    finally:
        eng.stop.set()
        for thread in eng.threads:
            thread.join(30)
        consumer.close()
        drop_database(database_admin_url, db_name)


Tenant = tuple[Engine, Routers, str, str]


@pytest.fixture
def tenant(setup: tuple[Engine, Routers, str]) -> Tenant:
    """A fresh tenant (operator ``ops@<tenant>``) with the module's workflows published."""
    eng, routers, url = setup
    name = f"w{uuid.uuid4().hex[:8]}"
    register_tenant(eng.settings, name, eng.public_key, operators=[f"ops@{name}"])  # type: ignore[attr-defined]
    for text in (WAIT, LONG_WAIT, APPROVAL):
        eng.publish(text, tenant=name)
    return eng, routers, url, name


def types(events: list[dict[str, Any]], step: str | None = None) -> list[str]:
    return [e["type"] for e in events if step is None or e["step_id"] == step]


def has(kind: str, step: str | None = None) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda evs: kind in types(evs, step)


def start_run(eng: Engine, tenant: str, workflow: str, event: str, data: dict[str, Any]) -> str:
    return eng.run_id(workflow, eng.trigger(event, data, tenant=tenant), tenant=tenant)


def approve_cli(eng: Engine, url: str, key: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": str(eng.settings.kafka_bootstrap_servers),
        "DATABASE_URL": url,
        "SWITCHYARD_TOPIC_PREFIX": eng.settings.topic_prefix,
        "SWITCHYARD_INTERNAL_PARTITIONS": str(eng.settings.internal_partitions),
    }
    env.pop("SWITCHYARD_OPERATOR_KEY_FILE", None)
    return subprocess.run(
        [sys.executable, "-c", "from services.cli import main; main()", "approve", *args, "--key", str(key)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_one_second_wait_completes_in_the_router_without_an_executor(tenant: Tenant) -> None:
    eng, _, _, name = tenant
    run_id = start_run(eng, name, "pause", "pause", {})
    events = eng.wait_terminal([run_id], timeout_s=60)[run_id]
    assert types(events)[-1] == "run_succeeded"
    scheduled = next(e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "nap")
    woke = next(e for e in events if e["type"] == "step_succeeded" and e["step_id"] == "nap")
    assert scheduled["detail"]["kind"] == "wait" and scheduled["detail"]["action"] is None
    assert woke["detail"]["executor_id"] is None  # no executor ran it
    assert woke["detail"]["output"]["waited_until"] == scheduled["detail"]["waiting"]["until"]
    assert woke["at"] - scheduled["at"] >= 1000
    after = next(e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "after")
    assert after["detail"]["inputs"] == {"woke": scheduled["detail"]["waiting"]["until"]}


def test_a_wait_and_an_approval_survive_a_router_restart(tenant: Tenant, tmp_path: Path) -> None:
    eng, routers, url, name = tenant
    waiting = start_run(eng, name, "pause", "pause", {})
    asking = start_run(eng, name, "invoice", "invoice", {})
    eng.wait_events(waiting, has("step_scheduled", "nap"))
    eng.wait_events(asking, has("step_scheduled", "ask"))

    routers.restart()  # the wait's timer and the approval's timeout come back from the run state

    events = eng.wait_terminal([waiting], timeout_s=60)[waiting]
    assert types(events)[-1] == "run_succeeded"
    assert types(events, "nap").count("step_succeeded") == 1  # the rebuilt timer fired once

    key = write_key(tmp_path, f"ops@{name}")
    done = approve_cli(eng, url, key, asking, "ask", "--decision", "approve", "--comment", "numbers checked")
    assert done.returncode == 0, done.stderr
    assert f"accepted: approve of step ask of run {asking}" in " ".join(done.stderr.split())
    events = eng.wait_terminal([asking], timeout_s=60)[asking]
    assert types(events)[-1] == "run_succeeded"
    decided = next(e for e in events if e["type"] == "step_succeeded" and e["step_id"] == "ask")
    assert decided["detail"]["output"]["decision"] == "approve"
    assert decided["detail"]["output"]["by"] == f"ops@{name}"  # the verified key, not a claim
    assert decided["detail"]["output"]["comment"] == "numbers checked"
    accepted = next(e for e in events if e["type"] == "control_accepted")
    assert accepted["detail"]["kind"] == "approve" and accepted["detail"]["decision"] == "approve"
    sent = next(e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "send")
    assert sent["detail"]["inputs"] == {"by": f"ops@{name}"}

    # A second decision (the run is over by now) is refused, and the CLI says why.
    again = approve_cli(eng, url, key, asking, "ask", "--decision", "reject", "--comment", "too late")
    assert again.returncode == 1, again.stderr
    assert "refused: run is already succeeded" in " ".join(again.stderr.split())
    with psycopg.connect(url) as conn:  # the audit rows the CLI read its outcomes from
        rows = conn.execute(
            "select kind, requester, step_id, reason, outcome from control_commands"
            " where run_id = %s order by decided_at",
            (asking,),
        ).fetchall()
    assert rows == [
        ("approve", f"ops@{name}", "ask", "approve: numbers checked", "accepted"),
        ("approve", f"ops@{name}", "ask", "reject: too late", "refused"),
    ]


def test_a_rejection_fails_the_run_never_retried(tenant: Tenant) -> None:
    eng, _, _, name = tenant
    run_id = start_run(eng, name, "invoice", "invoice", {})
    eng.wait_events(run_id, has("step_scheduled", "ask"))
    cmd = command(
        "approve", name, run_id, f"ops@{name}", "reject: wrong client", step_id="ask",
        decision="reject", comment="wrong client",
    )  # fmt: skip
    sender = ControlSender(eng.settings)
    sender.send(signed(cmd, f"ops@{name}"))
    sender.flush()
    events = eng.wait_terminal([run_id], timeout_s=60)[run_id]
    assert types(events)[-1] == "run_failed"
    failed = next(e for e in events if e["type"] == "step_failed" and e["step_id"] == "ask")
    assert failed["detail"]["error_kind"] == "approval_rejected"
    assert failed["detail"]["error_message"] == f"rejected by ops@{name}: wrong client"
    assert types(events, "ask").count("step_scheduled") == 1  # not retried
    assert "send" not in {e["step_id"] for e in events}


def test_cancel_ends_a_waiting_run(tenant: Tenant) -> None:
    eng, _, _, name = tenant
    run_id = start_run(eng, name, "long-pause", "long", {"until": "2099-01-01T00:00:00Z"})
    events = eng.wait_terminal([run_id], timeout_s=60)[run_id]
    # 2099 is more than 366 days ahead: the wait fails at once with the reason
    failed = next(e for e in events if e["type"] == "step_failed")
    assert failed["detail"]["error_kind"] == "expression_error"
    assert "more than 366 days ahead" in failed["detail"]["error_message"]

    run_id = start_run(eng, name, "long-pause", "long", {"until": _in_an_hour()})
    eng.wait_events(run_id, has("step_scheduled", "nap"))
    cmd = command("cancel", name, run_id, f"ops@{name}", "client withdrew")
    sender = ControlSender(eng.settings)
    sender.send(signed(cmd, f"ops@{name}"))
    sender.flush()
    events = eng.wait_terminal([run_id], timeout_s=60)[run_id]
    assert types(events)[-3:] == ["control_accepted", "step_cancelled", "run_cancelled"]


def _in_an_hour() -> str:
    import datetime as dt

    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
