"""Promises that outlive router memory, on a real broker and a real PostgreSQL: with a retention of
two seconds, a re-sent trigger of a run that left the router is dead-lettered as a duplicate (never
run again), and runs that left it — or whose router restarted — are read back from their history
and replayed (from a step, their failed steps) like recent runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer

from services.contracts import serde
from services.contracts.records import ControlCommand
from services.control.commands import ControlSender, command
from tests.fixtures.engine import Engine, router_until
from tests.fixtures.kafka import consume_until
from tests.fixtures.operators import signed

pytestmark = pytest.mark.integration

RETENTION_S = 2.0
TWO_STEPS = """
name: two-steps
version: 1
trigger: {event: go}
steps:
  - {id: first, action: echo, inputs: {message: "${{ trigger.data.message }}"}}
  - {id: second, action: echo, needs: [first], inputs: {seen: "${{ steps.first.output.message }}"}}
"""
FLAKY = """
name: flaky
version: 1
trigger: {event: flaky}
steps:
  - id: call
    action: fail
    inputs: {error_kind: upstream_down, fail_attempts: 1}
    retry: {max_attempts: 1}
  - {id: after, action: echo, needs: [call], inputs: {ok: true}}
"""


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def wait_sql(url: str, sql: str, args: tuple[Any, ...], expected: object, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    value: object = None
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            row = conn.execute(sql, args).fetchone()
        value = row[0] if row else None
        if value == expected:
            return
        time.sleep(0.2)
    raise AssertionError(f"{sql} {args} = {value!r}, expected {expected!r} within {timeout_s}s")


def start(engine_factory: Callable[..., Engine], database_url: str, stop_router: threading.Event) -> Engine:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector

    eng = engine_factory(
        tenant_limits={"operators": ["ops@acme"]},
        database_url=database_url,
        finished_run_retention_s=RETENTION_S,
    )
    assert eng.start("projector", run_projector).wait(60)
    assert eng.start("router", router_until(stop_router), instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)
    eng.publish(TWO_STEPS)
    eng.publish(FLAKY)
    return eng


def left_router(state: Consumer, run_id: str) -> None:
    """Wait for the run's tombstone in the router's changelog: it left router memory."""
    consume_until(state, lambda seen: any(m.key() == run_id.encode() and m.value() is None for m in seen))


def finished_in_history(eng: Engine, url: str, run_id: str, outcome: str) -> list[dict[str, Any]]:
    events = eng.wait_terminal([run_id])[run_id]
    assert types(events)[-1] == f"run_{outcome}"
    wait_sql(url, "select state from runs where run_id = %s", (run_id,), outcome)
    return events


def replay(eng: Engine, run_id: str, step: str | None = None) -> ControlCommand:
    cmd = signed(command("replay_run", "acme", run_id, "ops@acme", "durable", step_id=step), "ops@acme")
    sender = ControlSender(eng.settings)
    sender.send(cmd)
    sender.flush()
    return cmd


def test_a_trigger_resent_after_its_run_left_the_router_is_a_duplicate_never_run_again(
    engine_factory: Callable[..., Engine],
    database_url: str,
    make_consumer: Callable[..., Consumer],
) -> None:
    eng = start(engine_factory, database_url, threading.Event())
    state = make_consumer([eng.topics.router_state])
    dlq = make_consumer([eng.topics.dlq])
    run_id = eng.run_id("two-steps", eng.trigger("go", {"message": "once"}, key="order-42"))
    first = finished_in_history(eng, database_url, run_id, "succeeded")
    left_router(state, run_id)

    eng.trigger("go", {"message": "twice"}, key="order-42")
    letters = consume_until(
        dlq, lambda seen: any(serde.decode(m.value())[1]["error_kind"] == "duplicate_run" for m in seen)
    )
    letter = next(
        serde.decode(m.value())[1]
        for m in letters
        if serde.decode(m.value())[1]["error_kind"] == "duplicate_run"
    )
    assert run_id in letter["error_message"]
    assert "already in the run history (succeeded" in letter["error_message"]
    # The dead letter was committed with whatever else that transaction wrote: nothing of the run.
    eng.log.pump(1.0)
    assert len(eng.log.by_run[run_id]) == len(first)
    wait_sql(
        database_url,
        "select count(*) from dead_letters where error_kind = 'duplicate_run' and error_message like %s",
        (f"run {run_id} %",),
        1,
    )
    with psycopg.connect(database_url) as conn:
        attempts = conn.execute("select count(*) from attempts where run_id = %s", (run_id,)).fetchone()
    assert attempts == (2,)  # one attempt per step: no second side effect


def test_runs_that_left_the_router_or_outlived_a_restart_are_replayed_from_their_history(
    engine_factory: Callable[..., Engine],
    database_url: str,
    make_consumer: Callable[..., Consumer],
) -> None:
    stop_r1 = threading.Event()
    eng = start(engine_factory, database_url, stop_r1)
    state = make_consumer([eng.topics.router_state])

    # (b) A succeeded run, out of router memory, replayed from its second step.
    ok_run = eng.run_id("two-steps", eng.trigger("go", {"message": "hi"}))
    finished_in_history(eng, database_url, ok_run, "succeeded")
    left_router(state, ok_run)
    replay(eng, ok_run, step="second")
    events = eng.wait_events(ok_run, lambda evs: types(evs).count("run_succeeded") == 2)
    rerun = [e for e in events if e["type"] == "step_scheduled" and e["step_id"] == "second"]
    assert [e["attempt"] for e in rerun] == [1, 2]  # attempt numbers continue
    assert rerun[1]["detail"]["inputs"] == rerun[0]["detail"]["inputs"] == {"seen": "hi"}
    assert sorted(e["seq"] for e in events) == list(range(1, len(events) + 1))  # no gap, no repeat

    # (c) A failed run, out of router memory, its failed step replayed.
    failed_run = eng.run_id("flaky", eng.trigger("flaky", {}))
    finished_in_history(eng, database_url, failed_run, "failed")
    left_router(state, failed_run)
    replay(eng, failed_run)
    events = eng.wait_events(failed_run, lambda evs: "run_succeeded" in types(evs))
    replayed = next(e for e in events if e["type"] == "run_replayed")
    assert replayed["detail"]["steps"] == ["call"]
    wait_sql(database_url, "select state from runs where run_id = %s", (failed_run,), "succeeded")

    # (d) The router restarts between a run's end and its replay.
    last_run = eng.run_id("two-steps", eng.trigger("go", {"message": "restart"}))
    finished_in_history(eng, database_url, last_run, "succeeded")
    stop_r1.set()
    for thread in eng.threads:
        if thread.name == "router":
            thread.join(60)
            assert not thread.is_alive()
    from services.router.service import run_router

    assert eng.start("router-2", run_router, instance_id="r2").wait(60)
    replay(eng, last_run, step="first")
    events = eng.wait_events(last_run, lambda evs: types(evs).count("run_succeeded") == 2, timeout_s=60)
    assert types(events).count("run_replayed") == 1
    wait_sql(
        database_url,
        "select count(*) from control_commands where run_id = %s and outcome = 'accepted'",
        (last_run,),
        1,
    )


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_the_history_lookup_on_postgresql_answers_for_its_prefix_only_and_fails_fast(
    database_url: str,
) -> None:
    from services.projector.db import upgrade_database
    from services.router.history import HistoryPaused, HistoryUnavailable, PostgresHistory

    unmigrated = PostgresHistory(database_url, "p.events")
    with pytest.raises(HistoryUnavailable, match="no projection tables"):
        unmigrated.known(["r1"])
    with pytest.raises(HistoryPaused):  # not asked again at once
        unmigrated.known(["r1"])
    unmigrated.close()

    upgrade_database(database_url)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into runs (run_id, tenant, workflow, version, state, correlation_id, idempotency_key,"
            " event_type, trigger_data, created_at, finished_at, updated_at, last_seq)"
            " values ('r1', 'acme', 'two-steps', 1, 'failed', 'c1', 'k1', 'go', '{\"message\": \"m\"}',"
            " now(), now(), now(), 7)"
        )
        conn.execute(
            "insert into steps (run_id, step_id, state, attempts, output) values"
            " ('r1', 'first', 'succeeded', 1, '{\"message\": \"m\"}'), ('r1', 'second', 'failed', 2, null)"
        )
    history = PostgresHistory(database_url, "p.events")
    assert history.known(["r1", "r2"]) == {}  # no projector of p.events stores offsets here yet
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "insert into consumer_offsets (consumer, topic, partition, next_offset)"
            " values ('g', 'p.events', 0, 1)"
        )
    found = history.known(["r1", "r2", "bad\x00id", "\ud800"])  # unqueryable ids are skipped
    assert list(found) == ["r1"] and found["r1"].state == "failed"
    other_prefix = PostgresHistory(database_url, "other.events")
    assert other_prefix.known(["r1"]) == {}
    other_prefix.close()
    stored = history.load("r1")
    assert stored is not None and (stored.last_seq, stored.replays, stored.trigger_omitted) == (7, 0, False)
    assert stored.trigger_data == {"message": "m"}
    assert {s.step_id: (s.state, s.attempts) for s in stored.steps} == {
        "first": ("succeeded", 1),
        "second": ("failed", 2),
    }
    assert history.load("r2") is None and history.load("bad\x00id") is None
    # Its kept connection killed (as by a server restart): the next lookup reconnects and answers.
    with psycopg.connect(database_url, autocommit=True) as conn:
        killed = conn.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where application_name = 'switchyard-router-history' and datname = current_database()"
        ).fetchone()
    assert killed == (1,)
    assert list(history.known(["r1"])) == ["r1"]
    history.close()

    unreachable = PostgresHistory("postgresql://nobody@127.0.0.1:1/none", "p.events")
    started = time.monotonic()
    with pytest.raises(HistoryUnavailable):
        unreachable.known(["r1"])
    assert time.monotonic() - started < 5
    unreachable.close()
