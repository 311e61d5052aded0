"""End to end with the real CLI: a bulk replay of 1,000 failed runs, then an audit rebuild that
reproduces the live tables after a mixed load (failures, retries, replays, cancellations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from services.control.commands import ControlSender, command
from tests.fixtures.engine import Engine
from tests.fixtures.operators import signed, write_key

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """Already migrated (a template copy): the projector's start-up migration is a no-op here."""
    return migrated_database_url


FAILS_ONCE = """
name: fails-once
version: 1
trigger: {event: once}
steps:
  - id: call
    action: fail
    inputs: {error_kind: upstream_down, fail_attempts: 1}
    retry: {max_attempts: 1}
"""
RETRIES = """
name: retries
version: 1
trigger: {event: retry}
steps:
  - id: call
    action: fail
    inputs: {error_kind: flaky, fail_attempts: 1}
    retry: {max_attempts: 2, initial_backoff: 0.05, max_backoff: 0.05}
"""
SLOW = """
name: slow
version: 1
trigger: {event: slow}
steps:
  - {id: wait, action: sleep, inputs: {seconds: 120}, timeout: 300}
"""
RUNS = int(os.environ.get("SWITCHYARD_TEST_BULK_RUNS", "1000"))


def cli(
    eng: Engine, database_url: str, *args: str, timeout_s: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": str(eng.settings.kafka_bootstrap_servers),
        "DATABASE_URL": database_url,
        "SWITCHYARD_TOPIC_PREFIX": eng.settings.topic_prefix,
        "SWITCHYARD_INTERNAL_PARTITIONS": str(eng.settings.internal_partitions),
    }
    return subprocess.run(
        [sys.executable, "-c", "from services.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_sql(url: str, sql: str, expected: object, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    value: object = None
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute(sql).fetchone()
        value = row[0] if row else None
        if value == expected:
            return
        time.sleep(0.3)
    raise AssertionError(f"{sql} = {value!r}, expected {expected!r} within {timeout_s}s")


def test_bulk_replay_of_1000_failed_runs_then_audit_rebuild(
    engine_factory: Callable[..., Engine], database_url: str, tmp_path: Path
) -> None:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    eng = engine_factory(
        tenant_limits={
            "operators": ["ops@acme"],
            "max_concurrent_runs": 500,
            "trigger_rate": 10_000,
            "trigger_burst": 10_000,
        },
        database_url=database_url,
    )
    for name, fn, kwargs in (
        ("router", run_router, {"instance_id": "r1"}),
        ("executor", run_executor, {"instance_id": "e1"}),
        ("projector", run_projector, {}),
    ):
        assert eng.start(name, fn, **kwargs).wait(60), name
    for text in (FAILS_ONCE, RETRIES, SLOW):
        eng.publish(text)

    t0 = time.monotonic()
    slow_run = eng.run_id("slow", eng.trigger("slow", {}, key="to-cancel"))
    eng.wait_events(slow_run, lambda evs: any(e["type"] == "step_scheduled" for e in evs))
    sender = ControlSender(eng.settings)
    sender.send(signed(command("cancel", "acme", slow_run, "ops@acme", "client withdrew"), "ops@acme"))
    sender.flush()
    for i in range(RUNS):
        eng.trigger("once", {"i": i}, key=f"bulk-{i}", flush=False)
    for i in range(20):
        eng.trigger("retry", {"i": i}, key=f"retry-{i}", flush=False)
    eng.flush()
    wait_sql(
        database_url, "select count(*) from runs where workflow = 'fails-once' and state = 'failed'", RUNS
    )
    wait_sql(database_url, "select count(*) from runs where workflow = 'retries' and state = 'succeeded'", 20)

    key = write_key(tmp_path, "ops@acme")  # the fixture's operator key (tests/fixtures/operators.py)
    dry = cli(
        eng,
        database_url,
        "replay",
        "--tenant",
        "acme",
        "--workflow",
        "fails-once",
        "--reason",
        "bulk",
        "--key",
        str(key),
        "--dry-run",
    )
    print(f"1,000 runs failed after {time.monotonic() - t0:.1f}s")
    assert dry.returncode == 0, dry.stderr
    assert f"{RUNS} failed runs, {RUNS} failed steps match" in dry.stderr
    bulk = cli(
        eng,
        database_url,
        "replay",
        "--tenant",
        "acme",
        "--workflow",
        "fails-once",
        "--error-kind",
        "upstream_down",
        "--reason",
        "upstream fixed",
        "--key",
        str(key),
        "--wait",
        "240",
    )
    assert bulk.returncode == 0, bulk.stderr
    assert f"accepted {RUNS}, refused 0" in bulk.stderr
    print(f"bulk replay accepted after {time.monotonic() - t0:.1f}s")
    wait_sql(
        database_url, "select count(*) from runs where workflow = 'fails-once' and state = 'succeeded'", RUNS
    )
    wait_sql(database_url, f"select state from runs where run_id = '{slow_run}'", "cancelled")

    with psycopg.connect(database_url) as conn:
        attempts, distinct = conn.execute(
            "select count(*), count(distinct (run_id, step_id, attempt)) from attempts a "
            "join runs r using (run_id) where r.workflow = 'fails-once'"
        ).fetchone() or (0, 0)
        scheduled = conn.execute(
            "select count(*), count(distinct (run_id, step_id, attempt)) from run_events "
            "where type = 'step_scheduled' and run_id in "
            "(select run_id from runs where workflow = 'fails-once')"
        ).fetchone()
        results = conn.execute(
            "select max(n) from (select count(*) n from run_events where type in ('step_succeeded', "
            "'step_failed') group by run_id, step_id, attempt) t"
        ).fetchone()
        commands = conn.execute(
            "select outcome, count(*) from control_commands where tenant = 'acme' group by outcome"
        ).fetchall()
    assert (attempts, distinct) == (2 * RUNS, 2 * RUNS)  # attempt 1 failed, attempt 2 (the replay) ran once
    assert scheduled == (2 * RUNS, 2 * RUNS)
    assert results == (1,)  # no attempt reported twice
    assert dict(commands) == {"accepted": RUNS + 1}

    print(f"replays done after {time.monotonic() - t0:.1f}s")
    audit = cli(eng, database_url, "audit", "rebuild", "--json")
    print(f"audit done after {time.monotonic() - t0:.1f}s")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    report = json.loads(audit.stdout)
    assert report["equal"] is True and report["skipped_runs"] == 0
    tables = {t["table"]: t for t in report["tables"]}
    assert tables["runs"]["live_rows"] == tables["runs"]["rebuilt_rows"] == RUNS + 21
    assert all(t["equal"] for t in tables.values())
