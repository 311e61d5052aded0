"""Containment on a real broker and PostgreSQL: no record can stall the projection for the others.

A hostile record (a refused control command naming a 300,000-character tenant, run events with
NUL bytes, lone surrogates, NaN and huge strings in their fields and details, a dead letter with
huge fields) is recorded bounded — or rejected with a reason — and the ordinary records behind it
in the same partition are projected. Plus: which real PostgreSQL errors blame a record.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from services.bus.topics import Topics
from services.contracts.dead_letters import encode_dead_letter
from services.contracts.serde import encode
from services.observability.progress import BOARD
from services.projector.bounds import MAX_KIND, MAX_MESSAGE, MAX_NAME
from services.projector.db import make_engine, upgrade_database
from services.projector.writer import is_data_error
from tests.integration.test_projector_support import (
    BASE_MS,
    RunHistory,
    control_command,
    control_refusal,
    create_projector_topics,
    dead_letter_record,
    encoded,
    produce,
    rows,
    running_projector,
    scalar,
    settings_for,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def hashed(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def cut(text: str, limit: int) -> str:
    return text[: limit - 1] + "…"


def test_a_refused_command_naming_a_huge_tenant_is_recorded_bounded_and_nothing_stalls(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=1)
    events_topic, dlq_topic = create_projector_topics(settings)
    control_topic = Topics(settings.topic_prefix).control
    tenant, requester = "t" * 300_000, "r" * 100_000
    hostile = control_command(None, tenant=tenant, requester=requester, reason="x" * 50_000)
    original = encode("ControlCommand", hostile)
    # The dead letter exactly as intake writes it (its own fields bounded, the original copied).
    refused = encode_dead_letter(
        "router.intake",
        "invalid_field",
        "tenant is not a tenant id (300000 characters)",
        BASE_MS,
        topic=control_topic,
        partition=0,
        offset=7,
        value=original,
        tenant=tenant,
        correlation_id=hostile["correlation_id"],
    )
    ordinary = control_command(None, requester="bob")
    before = RunHistory().pending().started()
    after = RunHistory().pending().started()
    produce(settings, events_topic, encoded(before))
    produce(settings, dlq_topic, [(None, refused), (None, control_refusal(settings, ordinary, "no"))])
    produce(settings, events_topic, encoded(after))

    with running_projector(settings):
        wait_for(
            lambda: (
                scalar(engine, "select count(*) from control_commands") == 2
                and scalar(engine, "select state from runs where run_id = :r", r=after.run_id) == "running"
            ),
            what="both refusals and the runs around them projected",
        )

    decision = rows(engine, "select * from control_commands where command_id = :c", c=hostile["command_id"])[
        0
    ]
    assert decision.tenant == cut(tenant, MAX_NAME) and decision.requester == cut(requester, MAX_NAME)
    assert decision.reason == cut(hostile["reason"], MAX_MESSAGE)
    assert (decision.outcome, decision.source) == ("refused", "dlq")
    letter = rows(engine, "select * from dead_letters where tenant like 'ttt%'")[0]
    assert letter.tenant == decision.tenant  # the dead letter and the decision name the same tenant
    assert letter.original_value_size == len(original) and len(letter.original_value) == 64 * 1024
    bob = rows(engine, "select * from control_commands where command_id = :c", c=ordinary["command_id"])
    assert bob[0].requester == "bob" and bob[0].refusal == "no"
    assert scalar(engine, "select count(*) from projector_rejects") == 0
    assert scalar(engine, "select count(*) from run_events") == 4


def test_run_events_with_nul_surrogates_nan_and_huge_strings_are_recorded_bounded(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=1)
    events_topic, _ = create_projector_topics(settings)

    wide = RunHistory(tenant="w" * 300_000)  # a tenant no index could hold
    wide.pending().started()

    long_ids = RunHistory()
    long_run_id, long_step = "r" * 3000, "s" * 5000
    long_ids.pending().started().scheduled(long_step).succeeded(long_step)
    long_ids.add("run_succeeded", state="succeeded")
    for event in long_ids.events:
        event["run_id"] = long_run_id
    long_ids.events[0]["correlation_id"] = "c" * 2000

    odd = RunHistory().pending(data={"text": "nul \u0000 byte", "lone": "\ud800", "ok": "\U0001f600"})
    odd.started().scheduled("fetch", inputs={"nan": float("nan"), "big": 1e308})
    odd.events[-1]["detail_json"] = odd.events[-1]["detail_json"].replace("1e+308", "1e400")
    odd.add(
        "step_failed",
        state="failed",
        step_id="fetch",
        attempt=1,
        detail={
            "error_kind": "k" * 10_000,
            "error_message": "m\u0000" * 20_000,
            "executor_id": "e" * 50_000,
        },
    )
    odd.add("run_failed", state="failed", detail={"error_kind": "\u0000", "error_message": "x" * 200_000})
    odd.add("result_ignored", detail={})["detail_json"] = '{"huge": 1e100000, "tiny": 1e-20000}'
    odd.events[1]["correlation_id"] = "nul\x00in\x00a\x00field"
    odd.events[1]["workflow"] = "wf\x00"
    not_json = RunHistory().pending()
    not_json.events[0]["detail_json"] = "not json \x00 " + "[" * 5000

    ordinary = RunHistory().pending().started().scheduled("a").succeeded("a")
    histories = [wide, long_ids, odd, not_json, ordinary]
    produce(settings, events_topic, [record for h in histories for record in encoded(h)])
    total = sum(len(h.events) for h in histories)

    with running_projector(settings):
        wait_for(
            lambda: scalar(engine, "select count(*) from run_events") == total,
            what=f"all {total} events projected",
        )
    assert scalar(engine, "select count(*) from projector_rejects") == 0

    run = rows(engine, "select * from runs where tenant like 'www%'")[0]
    assert run.tenant == cut(wide.tenant, MAX_NAME) and run.state == "running"

    run = rows(engine, "select * from runs where run_id = :r", r=hashed(long_run_id))[0]
    assert (run.state, run.last_seq, run.correlation_id) == ("succeeded", 5, hashed("c" * 2000))
    step = rows(engine, "select * from steps where run_id = :r", r=run.run_id)[0]
    assert (step.step_id, step.state) == (hashed(long_step), "succeeded")
    assert scalar(engine, "select count(*) from attempts where run_id = :r", r=run.run_id) == 1

    run = rows(engine, "select * from runs where run_id = :r", r=odd.run_id)[0]
    assert run.trigger_data == {"text": "nul \\u0000 byte", "lone": "\\ud800", "ok": "\U0001f600"}
    assert (run.state, run.error_kind, run.error_message) == ("failed", "\\u0000", cut("x" * 200_000, 4000))
    inputs = scalar(engine, "select inputs from attempts where run_id = :r", r=odd.run_id)
    assert inputs == {"nan": "NaN", "big": "1e400"}
    step = rows(engine, "select * from steps where run_id = :r", r=odd.run_id)[0]
    assert step.state == "failed" and step.error_kind == cut("k" * 10_000, MAX_KIND)
    assert len(step.error_message) == MAX_MESSAGE and step.error_message.startswith("m\\u0000m\\u0000")
    executor = scalar(engine, "select executor_id from attempts where run_id = :r", r=odd.run_id)
    assert executor == cut("e" * 50_000, MAX_NAME)
    started = rows(engine, "select * from run_events where run_id = :r and seq = 2", r=odd.run_id)[0]
    assert (started.correlation_id, started.workflow) == (hashed("nul\x00in\x00a\x00field"), "wf\\u0000")

    numbers = scalar(engine, "select detail from run_events where run_id = :r and seq = 6", r=odd.run_id)
    assert numbers == {"huge": "1e100000", "tiny": 0.0}  # numeric refuses both as they are
    raw = scalar(engine, "select detail from run_events where run_id = :r", r=not_json.run_id)
    assert raw == {"_raw": "not json \\u0000 " + "[" * 5000}
    assert scalar(engine, "select state from runs where run_id = :r", r=ordinary.run_id) == "running"
    assert scalar(engine, "select state from steps where run_id = :r", r=ordinary.run_id) == "succeeded"


def test_a_dead_letter_with_huge_fields_is_recorded_bounded(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=1)
    _, dlq_topic = create_projector_topics(settings)
    dlq_id = "d" * 5000
    huge = dead_letter_record(
        "kind\x00" * 2000,
        "message " * 40_000,
        original_topic="wf.tenant.acme.triggers",
        original_value=b"v" * 100_000,
        tenant="t\x00" * 50_000,
        dlq_id=dlq_id,
        service="svc" * 1000,
        correlation_id="c" * 5000,
        run_id="r" * 3000,
        step_id="s\x00",
        original_key=b"k" * 100_000,
    )
    ordinary = dead_letter_record("bad_json", "trigger is not JSON", original_topic="wf.tenant.acme.triggers")
    produce(settings, dlq_topic, [(None, encode("DeadLetter", huge)), (None, encode("DeadLetter", ordinary))])

    with running_projector(settings):
        wait_for(lambda: scalar(engine, "select count(*) from dead_letters") == 2, what="both dead letters")

    letter = rows(engine, "select * from dead_letters where dlq_id = :d", d=hashed(dlq_id))[0]
    assert letter.error_kind == cut("kind\\u0000" * 2000, MAX_KIND)
    assert letter.error_message == cut("message " * 40_000, MAX_MESSAGE)
    assert letter.service == cut("svc" * 1000, MAX_KIND)
    assert letter.tenant == cut("t\\u0000" * 50_000, MAX_NAME)
    assert (letter.run_id, letter.correlation_id) == (hashed("r" * 3000), hashed("c" * 5000))
    assert letter.step_id == hashed("s\x00")
    assert len(letter.original_key) == 16 * 1024 and letter.original_value_size == 100_000
    assert scalar(engine, "select count(*) from dead_letters where dlq_id = :d", d=ordinary["dlq_id"]) == 1
    assert scalar(engine, "select count(*) from projector_rejects") == 0


def test_a_record_the_database_refuses_all_the_same_is_rejected_and_its_batch_commits(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    """A refusal the bounds cannot foresee (here an operator's index on the trigger data: program
    limit exceeded, SQLSTATE 54000) rejects that event; the batch and the partition go on."""
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=1)
    events_topic, _ = create_projector_topics(settings)
    upgrade_database(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("create index runs_trigger_text on runs ((trigger_data::text))"))
    good = RunHistory().pending().started()
    poison = RunHistory().pending(data={"blob": "".join(uuid.uuid4().hex for _ in range(1000))})
    later = RunHistory().pending().started()
    produce(settings, events_topic, encoded(good, poison, later))

    with running_projector(settings):
        wait_for(
            lambda: scalar(engine, "select state from runs where run_id = :r", r=later.run_id) == "running",
            what="the events after the poison projected",
        )
        wait_for(lambda: scalar(engine, "select count(*) from projector_rejects") == 1, what="1 reject")
    reject = rows(engine, "select * from projector_rejects")[0]
    assert reject.reason == "apply_error" and "ProgramLimitExceeded" in reject.message
    assert scalar(engine, "select count(*) from runs where run_id = :r", r=poison.run_id) == 0
    assert scalar(engine, "select count(*) from run_events") == 4


# -- which real PostgreSQL errors blame a record ---------------------------------------------------


def _error(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def _raise_sqlstate(code: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{code}'; END $$"


def test_real_database_errors_are_classified(database_url: str, engine: sa.Engine) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("create temporary table t (a text, j jsonb, i int unique)")
        conn.execute("create index on t (a)")
        conn.execute("insert into t (i) values (1)")
        random_text = "".join(uuid.uuid4().hex for _ in range(200))

        def run(sql: str, *params: Any) -> Callable[[], Any]:
            return lambda: conn.execute(sql.encode(), params)

        data = {
            "index row too large": run("insert into t (a) values (%s)", random_text),
            "NUL in text (client)": run("insert into t (a) values (%s)", "a\x00b"),
            "NUL in a binary array": run("insert into t (a) select * from unnest(%b::text[])", ["a\x00"]),
            "NUL escape in jsonb": run("insert into t (j) values (%s::jsonb)", '{"a": "\\u0000"}'),
            "lone surrogate escape": run("insert into t (j) values (%s::jsonb)", '{"a": "\\ud800"}'),
            "NaN in jsonb": run("insert into t (j) values (%s::jsonb)", '{"a": NaN}'),
            "lone surrogate (client)": run("insert into t (a) values (%s)", "\ud800"),
            "integer out of range": run("insert into t (i) values (%s)", 2**40),
            "unique violation": run("insert into t (i) values (1)"),
            "one row twice in one upsert": run(
                "insert into t (i) values (1), (1) on conflict (i) do update set a = 'x'"
            ),
            "too deep for jsonb": run("select %s::jsonb", "[" * 100_000 + "]" * 100_000),
        }
        infrastructure = {
            "serialization failure": run(_raise_sqlstate("40001")),
            "deadlock": run(_raise_sqlstate("40P01")),
            "admin shutdown": run(_raise_sqlstate("57P01")),
            "missing table": run("select * from no_such_table"),
            "out of memory": run(_raise_sqlstate("53200")),
        }
        for what, call in data.items():
            exc = _error(call)
            assert is_data_error(exc), (what, type(exc), exc)
        for what, call in infrastructure.items():
            exc = _error(call)
            assert not is_data_error(exc), (what, type(exc), exc)

    # Through SQLAlchemy (the dead-letter and control statements), and a connection really lost.
    with engine.connect() as sa_conn:

        def as_jsonb(value: str) -> Callable[[], Any]:
            return lambda: sa_conn.execute(sa.text("select cast(:v as jsonb)"), {"v": value})

        for value in ('{"a": "\\u0000"}', "[" * 100_000 + "]" * 100_000):  # 22P05, 54001
            refused = _error(as_jsonb(value))
            assert isinstance(refused, sa.exc.DBAPIError) and is_data_error(refused), refused
            sa_conn.rollback()
        pid = sa_conn.execute(sa.text("select pg_backend_pid()")).scalar()
        with psycopg.connect(database_url, autocommit=True) as killer:
            killer.execute("select pg_terminate_backend(%s)", (pid,))
        lost = _error(lambda: sa_conn.execute(sa.text("select 1")))
        assert isinstance(lost, sa.exc.DBAPIError) and not is_data_error(lost)


def test_a_projector_held_back_by_its_database_reads_as_stalled_then_recovers(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=1)
    settings = settings.model_copy(update={"stall_after_s": 2.0})
    events_topic, _ = create_projector_topics(settings)
    first, second = RunHistory().pending(), RunHistory().pending()
    with running_projector(settings) as projector:
        produce(settings, events_topic, encoded(first))
        wait_for(lambda: scalar(engine, "select count(*) from run_events") == 1, what="first event")
        wait_for(lambda: not projector.progress.stalls(), what="caught up: not stalled")
        with engine.connect() as locker:  # an operator's lock holds the next batch back
            locker.execute(sa.text("lock table run_events in access exclusive mode"))
            produce(settings, events_topic, encoded(second))
            stalled = wait_for(projector.progress.stalls, what="the held-back partition stalled")
            assert [(s.service, s.topic, s.partition) for s in stalled] == [("projector", events_topic, 0)]
            assert events_topic in {s.topic for s in BOARD.stalls(["projector"])}  # what /readyz reads
            locker.rollback()
        wait_for(lambda: scalar(engine, "select count(*) from run_events") == 2, what="second event")
        wait_for(lambda: not projector.progress.stalls(), what="progress again")
