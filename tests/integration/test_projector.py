"""The projector on a real broker and a real PostgreSQL: rows, exactly-once, rejects, migrations."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg.conninfo import conninfo_to_dict

from services.contracts.serde import encode
from services.observability.metrics import REGISTRY
from services.projector.db import alembic_config, current_revision, make_engine, upgrade_database
from services.projector.models import Base
from tests.integration.test_projector_support import (
    RunHistory,
    cancelled,
    create_events_topic,
    encoded,
    failed_on_timeout,
    produce,
    rows,
    running_projector,
    scalar,
    settings_for,
    succeeded_with_retry,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def test_projects_runs_steps_attempts_and_events(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique)
    topic = create_events_topic(settings)
    ok, bad, stopped = succeeded_with_retry(), failed_on_timeout(), cancelled()
    produce(settings, topic, encoded(ok, bad, stopped))

    with running_projector(settings):
        wait_for(
            lambda: (
                scalar(engine, "select count(*) from run_events") == 24
                and scalar(engine, "select count(*) from runs where finished_at is not null") == 3
            ),
            what="all 24 events projected",
        )

    run = rows(engine, "select * from runs where run_id = :r", r=ok.run_id)[0]
    assert (run.tenant, run.workflow, run.version, run.state) == ("acme", "orders", 3, "succeeded")
    assert run.correlation_id == ok.correlation_id
    assert (run.event_type, run.idempotency_key, run.trigger_data) == (
        "order.created",
        "order-7",
        {"order": 7},
    )
    assert run.created_at == ms(ok.at(1))
    assert run.started_at == ms(ok.at(2))  # not moved by run_running at seq 7
    assert run.finished_at == ms(ok.at(13)) == run.updated_at
    assert run.last_seq == 13 and run.error_kind is None

    steps = {s.step_id: s for s in rows(engine, "select * from steps where run_id = :r", r=ok.run_id)}
    assert set(steps) == {"fetch", "notify", "cleanup"}
    assert (steps["fetch"].state, steps["fetch"].attempts, steps["fetch"].output) == (
        "succeeded",
        2,
        {"rows": 3},
    )
    assert steps["fetch"].error_kind is None and steps["fetch"].started_at == ms(ok.at(3))
    assert steps["notify"].state == "succeeded" and steps["notify"].attempts == 1
    assert (steps["cleanup"].state, steps["cleanup"].attempts) == ("skipped", 0)
    assert steps["cleanup"].finished_at == ms(ok.at(12))

    attempts = {
        (a.step_id, a.attempt): a
        for a in rows(engine, "select * from attempts where run_id = :r", r=ok.run_id)
    }
    assert set(attempts) == {("fetch", 1), ("fetch", 2), ("notify", 1)}
    first = attempts[("fetch", 1)]
    assert (first.state, first.error_kind, first.error_message) == ("failed", "http_503", "upstream busy")
    assert first.idempotency_key == f"{ok.run_id}:fetch:1" and first.inputs == {"step": "fetch"}
    assert first.scheduled_at == ms(ok.at(3)) and first.finished_at == ms(ok.at(4))
    second = attempts[("fetch", 2)]
    assert (second.state, second.output, second.executor_id) == ("succeeded", {"rows": 3}, "exec-1")
    assert second.started_at == ms(ok.at(8) - 500) and second.finished_at == ms(ok.at(8) - 100)

    events = rows(engine, "select * from run_events where run_id = :r order by seq", r=ok.run_id)
    assert [e.seq for e in events] == list(range(1, 14))
    assert [e.type for e in events][:3] == ["run_pending", "run_started", "step_scheduled"]
    ignored = events[9]
    assert (ignored.type, ignored.state, ignored.detail) == (
        "result_ignored",
        None,
        {"reason": "stale attempt"},
    )
    assert all(e.kafka_topic == topic and e.kafka_offset >= 0 for e in events)
    assert len({e.kafka_partition for e in events}) == 1  # keyed by run

    failed = rows(engine, "select * from runs where run_id = :r", r=bad.run_id)[0]
    assert (failed.state, failed.error_kind, failed.error_message) == (
        "failed",
        "timeout",
        "charge timed out",
    )
    charge = rows(engine, "select * from attempts where run_id = :r", r=bad.run_id)[0]
    assert (charge.state, charge.error_kind) == ("timed_out", "timeout")
    step = rows(engine, "select * from steps where run_id = :r", r=bad.run_id)[0]
    assert (step.state, step.error_kind, step.finished_at) == ("failed", "timeout", ms(bad.at(5)))

    gone = rows(engine, "select * from runs where run_id = :r", r=stopped.run_id)[0]
    assert gone.state == "cancelled" and gone.finished_at == ms(stopped.at(5))
    charge = rows(engine, "select * from attempts where run_id = :r", r=stopped.run_id)[0]
    assert charge.state == "cancelled"

    stored = rows(engine, "select * from consumer_offsets")
    assert {r.consumer for r in stored} == {f"{settings.topic_prefix}.projector"}
    assert sum(r.next_offset for r in stored) == 24  # one transaction: offsets 0..n-1 per partition


def test_restart_with_duplicates_and_new_events_applies_each_event_once(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique)
    topic = create_events_topic(settings)
    group = f"g-{unique}"
    h = RunHistory().pending().started().scheduled("fetch")
    first = encoded(h)
    produce(settings, topic, first)
    with running_projector(settings, group_id=group):
        wait_for(lambda: scalar(engine, "select count(*) from run_events") == 3, what="first 3 events")
    assert scalar(engine, "select state from steps where run_id = :r", r=h.run_id) == "running"

    h.add(
        "step_retrying",
        state="retrying",
        step_id="fetch",
        attempt=1,
        detail={"error_kind": "http_500", "error_message": "boom", "next_attempt": 2},
    )
    h.scheduled("fetch", attempt=2).succeeded("fetch", attempt=2).add("run_succeeded", state="succeeded")
    # The router re-emits what it already emitted (e.g. after a crash), then the new events.
    ends = produce(settings, topic, [*first, *encoded(h)])

    with running_projector(settings, group_id=group):
        wait_for(
            lambda: scalar(engine, "select state from runs where run_id = :r", r=h.run_id) == "succeeded",
            what="run succeeded",
        )
        wait_for(
            lambda: (
                {(r.partition, r.next_offset) for r in rows(engine, "select * from consumer_offsets")}
                == set(ends.items())
            ),
            what="offsets stored up to the end",
        )

    assert scalar(engine, "select count(*) from run_events") == 7
    assert scalar(engine, "select count(distinct seq) from run_events where run_id = :r", r=h.run_id) == 7
    assert scalar(engine, "select count(*) from steps") == 1
    step = rows(engine, "select * from steps")[0]
    assert (step.state, step.attempts, step.error_kind) == ("succeeded", 2, None)
    attempts = rows(engine, "select * from attempts order by attempt")
    assert [(a.attempt, a.state) for a in attempts] == [(1, "failed"), (2, "succeeded")]
    run = rows(engine, "select * from runs")[0]
    assert (run.last_seq, run.state) == (7, "succeeded")
    # Duplicates are stored once, at the offset where the event was first read.
    assert scalar(engine, "select max(kafka_offset) from run_events where seq <= 3") == 2


def test_rebuilding_from_the_start_of_the_log_changes_nothing(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique)
    topic = create_events_topic(settings)
    histories = [succeeded_with_retry(), failed_on_timeout(), cancelled()]
    produce(settings, topic, encoded(*histories))
    tables = ("runs", "steps", "attempts", "run_events")

    def snapshot() -> dict[str, list[tuple[object, ...]]]:
        return {t: sorted(tuple(r) for r in rows(engine, f"select * from {t}")) for t in tables}

    with running_projector(settings, batch_size=5):
        wait_for(lambda: scalar(engine, "select count(*) from run_events") == 24, what="24 events")
    before = snapshot()
    offsets = rows(engine, "select partition, next_offset from consumer_offsets order by partition")

    # As if the offsets were lost (or a crash happened between the rows and the offsets, which
    # one transaction rules out anyway): everything is read again, in small batches.
    with engine.begin() as conn:
        conn.execute(sa.text("delete from consumer_offsets"))
    with running_projector(settings, batch_size=5):
        wait_for(
            lambda: (
                rows(engine, "select partition, next_offset from consumer_offsets order by partition")
                == offsets
            ),
            what="offsets restored",
        )
    assert snapshot() == before


def test_undecodable_and_unapplicable_records_are_rejected_without_stalling(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=1)
    topic = create_events_topic(settings)
    # Every value is made storable when decoded (see test_projector_containment.py); what the
    # database refuses all the same is rejected: here an index an operator added over the trigger
    # data, which a 32 KB incompressible trigger overflows (program limit exceeded, 54000).
    upgrade_database(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("create index runs_trigger_text on runs ((trigger_data::text))"))
    good = RunHistory().pending().started()
    poison = RunHistory().pending(data={"blob": "".join(uuid.uuid4().hex for _ in range(1000))})
    later = RunHistory().pending().started()
    records = [
        *encoded(good),
        (b"k", b"not avro"),
        (None, b'{"json": "instead of avro"}'),
        (b"k", encode("DeadLetter", dead_letter())),  # right framing, wrong schema
        *encoded(poison),
        *encoded(later),
    ]
    produce(settings, topic, records)

    def rejected(reason: str) -> float:
        return REGISTRY.get_sample_value("switchyard_projector_rejects_total", {"reason": reason}) or 0.0

    before = {reason: rejected(reason) for reason in ("bad_framing", "wrong_schema", "apply_error")}
    with running_projector(settings):
        wait_for(
            lambda: scalar(engine, "select state from runs where run_id = :r", r=later.run_id) == "running",
            what="events after the rejects projected",
        )
        wait_for(lambda: scalar(engine, "select count(*) from projector_rejects") == 4, what="4 rejects")

    rejects = rows(engine, 'select * from projector_rejects order by "offset"')
    assert [r.offset for r in rejects] == [2, 3, 4, 5]
    assert [r.reason for r in rejects] == ["bad_framing", "bad_framing", "wrong_schema", "apply_error"]
    assert rejects[0].payload == b"not avro" and rejects[0].key == b"k" and rejects[0].payload_size == 8
    assert "looks like JSON" in rejects[1].message
    assert rejects[3].payload is not None and len(rejects[3].payload) > 0
    assert all(r.topic == topic for r in rejects)
    assert scalar(engine, "select count(*) from runs where run_id = :r", r=poison.run_id) == 0
    assert scalar(engine, "select count(*) from run_events") == 4  # good (2) + later (2)
    assert rows(engine, "select next_offset from consumer_offsets")[0].next_offset == 8
    assert {reason: rejected(reason) - count for reason, count in before.items()} == {
        "bad_framing": 2,
        "wrong_schema": 1,
        "apply_error": 1,
    }


def dead_letter() -> dict[str, object]:
    from services.contracts.catalog import catalog

    schema = catalog().current["DeadLetter"].raw
    record: dict[str, object] = {}
    for f in schema["fields"]:
        t = f["type"]
        if "default" in f:
            record[f["name"]] = f["default"]
        elif t == "string":
            record[f["name"]] = "x"
        elif t in ("int", "long"):
            record[f["name"]] = 0
        elif t == "bytes":
            record[f["name"]] = b""
        else:
            record[f["name"]] = None
    return record


def test_migrations_match_the_models(database_url: str) -> None:
    assert current_revision(database_url) is None
    upgrade_database(database_url)
    upgrade_database(database_url)  # idempotent
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert current_revision(database_url) == head
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_sqlalchemy_url_reaches_the_real_server(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            name = conn.execute(sa.text("select current_database()")).scalar()
    finally:
        engine.dispose()
    assert name == conninfo_to_dict(database_url)["dbname"]


def test_two_instances_share_the_partitions_and_each_event_is_applied_once(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=4)
    topic = create_events_topic(settings)
    group = f"pair-{unique}"
    early = [RunHistory(tenant=f"t{i}").pending().started() for i in range(8)]
    produce(settings, topic, encoded(*early))
    with running_projector(settings, group_id=group, batch_size=3) as first:
        wait_for(lambda: scalar(engine, "select count(*) from run_events") == 16, what="early events")
        with running_projector(settings, group_id=group, batch_size=3) as second:
            wait_for(
                lambda: (
                    first.assigned_partitions
                    and second.assigned_partitions
                    and len(first.assigned_partitions | second.assigned_partitions) == 4
                ),
                what="partitions split between the two instances",
            )
            assert not first.assigned_partitions & second.assigned_partitions
            for h in early:
                h.scheduled("s").succeeded("s").add("run_succeeded", state="succeeded")
            late = [RunHistory(tenant=f"u{i}").pending() for i in range(4)]
            produce(settings, topic, encoded(*early, *late))  # old events again, then new ones
            wait_for(
                lambda: (
                    scalar(engine, "select count(*) from runs where state = 'succeeded'") == 8
                    and scalar(engine, "select count(*) from runs") == 12
                ),
                what="all runs projected",
            )
    assert scalar(engine, "select count(*) from run_events") == 8 * 5 + 4
    assert scalar(engine, "select count(*) from attempts where state = 'succeeded'") == 8
    assert scalar(engine, "select count(*) from projector_rejects") == 0
