"""A small engine world for the console tests: two tenants (and a suspended third) with runs that
succeed and fail, dead letters, operators and tokens — on a real broker and PostgreSQL, with the
router, executor and projector running in threads."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer
from sqlalchemy.orm import Session

from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.console.accounts import add_operator, add_token
from services.projector.db import make_engine, upgrade_database
from services.workflow.signing import generate_keypair
from tests.fixtures.database import with_dbname
from tests.fixtures.engine import Engine, EventLog, make_settings, register_tenant
from tests.fixtures.operators import gateway_settings

SECRET = "hunter2-SECRET-4242"
FLAKY = """
name: flaky
version: 1
trigger: {event: go}
steps:
  - {id: prepare, action: noop}
  - id: call
    action: fail
    needs: [prepare]
    inputs: {error_kind: "${{ trigger.data.kind }}", fail_attempts: "${{ trigger.data.failures }}"}
    retry: {max_attempts: 1}
  - id: notify
    action: echo
    needs: [call]
    inputs:
      url: "${{ trigger.data.url }}"
      headers: {Authorization: "${{ trigger.data.auth }}"}
"""
LINEAR = """
name: linear
version: 1
trigger: {event: go}
steps:
  - {id: only, action: noop}
"""


@dataclass
class World:
    settings: Settings
    database_url: str
    eng: Engine
    tokens: dict[str, str] = field(default_factory=dict)
    trigger_tokens: dict[str, str] = field(default_factory=dict)
    runs: dict[str, str] = field(default_factory=dict)  # label -> run id

    def sql(self, query: str, *args: Any) -> Any:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(query, args).fetchone()
        return None if row is None else row[0]

    def wait_sql(self, query: str, expected: object, timeout_s: float = 90, *args: Any) -> None:
        deadline = time.monotonic() + timeout_s
        value: object = None
        while time.monotonic() < deadline:
            value = self.sql(query, *args)
            if value == expected:
                return
            time.sleep(0.2)
        raise AssertionError(f"{query} = {value!r}, expected {expected!r} within {timeout_s}s")


def wait_until(predicate: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s}s")


@contextmanager
def console_world(kafka_bootstrap: str, database_admin_url: str, *, failing: int = 3) -> Iterator[World]:
    """Start the world; yields once every run is projected in its final state."""
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    unique = uuid.uuid4().hex[:10]
    dbname = f"sy_console_{unique}"
    with psycopg.connect(database_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    database_url = with_dbname(database_admin_url, dbname)
    keys = Path(tempfile.mkdtemp(prefix="console-keys-"))  # the console signs as a gateway
    settings = make_settings(
        kafka_bootstrap, f"c{unique}", database_url=database_url, **gateway_settings(keys)
    )
    ensure_topics(admin_client(settings), internal_specs(settings))
    private, public = generate_keypair()
    register_tenant(settings, "acme", public, operators=["ops@acme"])
    register_tenant(settings, "beta", public, operators=["ops@beta"])
    register_tenant(settings, "gamma", public, status="suspended")
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
    eng = Engine(settings, "acme", private, threading.Event(), EventLog(consumer))
    world = World(settings, database_url, eng)
    try:
        upgrade_database(database_url)
        for name, fn, kwargs in (
            ("router", run_router, {"instance_id": "r1"}),
            ("executor", run_executor, {"instance_id": "e1"}),
            ("projector", run_projector, {}),
        ):
            assert eng.start(name, fn, **kwargs).wait(60), name
        eng.publish(FLAKY)
        eng.publish(LINEAR, tenant="beta")
        _make_accounts(world)
        plain = {"failures": 0, "kind": "upstream_down", "url": "https://h.test/", "auth": "none"}
        for i in range(12):
            key = eng.trigger("go", {**plain, "i": i}, key=f"ok-{i}", flush=False)
            world.runs[f"ok-{i}"] = eng.run_id("flaky", key)
        for i in range(failing):
            key = eng.trigger("go", {**plain, "failures": 1}, key=f"fail-{i}", flush=False)
            world.runs[f"fail-{i}"] = eng.run_id("flaky", key)
        for i in range(3):  # for the replay tests: a kind of their own, so other filters stay stable
            data = {**plain, "failures": 1, "kind": "replayable" if i else "replayable_one"}
            world.runs[f"replay-{i}"] = eng.run_id(
                "flaky", eng.trigger("go", data, key=f"replay-{i}", flush=False)
            )
        secret_data = {
            "failures": 0,
            "kind": "none",
            "url": f"https://svc:{SECRET}@api.h.test/hook?api_key={SECRET}&page=1",
            "auth": f"Bearer {SECRET}",
            "password": SECRET,
        }
        world.runs["secret"] = eng.run_id("flaky", eng.trigger("go", secret_data, key="secret", flush=False))
        for i in range(2):
            key = eng.trigger("go", {}, key=f"beta-{i}", tenant="beta", flush=False)
            world.runs[f"beta-{i}"] = eng.run_id("linear", key, tenant="beta")
        eng.send_raw(b'{"event_type": "go", "data": nope', key="garbage-acme", tenant="acme", flush=False)
        eng.send_raw(b"\xff\xfe not json", key="garbage-beta", tenant="beta")
        total = 12 + failing + 3 + 1 + 2
        world.wait_sql(
            "select count(*) from runs where state in ('succeeded', 'failed')", total, timeout_s=120
        )
        world.wait_sql(
            "select count(*) from dead_letters where original_key in ('garbage-acme', 'garbage-beta')", 2
        )
        yield world
    finally:
        eng.stop.set()
        for thread in eng.threads:
            thread.join(30)
        consumer.close()
        shutil.rmtree(keys, ignore_errors=True)
        with psycopg.connect(database_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _make_accounts(world: World) -> None:
    engine = make_engine(world.database_url)
    try:
        with Session(engine) as session:
            for name, tenants, role in (
                ("ops@acme", ["acme"], "operator"),
                ("viewer@acme", ["acme"], "viewer"),
                ("ops@beta", ["beta"], "operator"),
                ("root@ops", [], "operator"),
                ("revoked@acme", ["acme"], "operator"),
            ):
                token = add_operator(session, name, tenants, role, everywhere=not tenants)
                world.tokens[name] = token.token
            for tenant in ("acme", "beta", "gamma"):
                world.trigger_tokens[tenant] = add_token(session, "trigger", tenant).token
            session.commit()
            from services.console.accounts import revoke_token
            from services.console.tokens import parse_token

            parsed = parse_token(world.tokens["revoked@acme"])
            assert parsed is not None
            revoke_token(session, parsed[0])
            session.commit()
    finally:
        engine.dispose()
