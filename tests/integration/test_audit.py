"""`switchyard audit rebuild` on real Kafka and PostgreSQL: equal after a mixed load, not after tampering."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from services.bus.topics import Topics
from services.commands.audit import app
from services.config import Settings
from services.contracts.serde import encode
from services.projector.compare import compare_schemas, current_schema
from services.projector.db import make_engine
from services.projector.rebuild import (
    capture_end_offsets,
    create_schema,
    drop_schema,
    new_schema_name,
    rebuild,
    wait_for_live,
)
from services.projector.runner import default_group_id
from tests.integration.test_projector_support import (
    RunHistory,
    cancelled,
    control_command,
    control_refusal,
    create_projector_topics,
    dead_letter_record,
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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


def audit_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    for name in ("SWITCHYARD_DATABASE_URL", "SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    assert settings.database_url and settings.kafka_bootstrap_servers
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("SWITCHYARD_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("COLUMNS", "250")


def replayed_run() -> RunHistory:
    """Fails, a replay is refused (limit), another accepted; attempt 2 succeeds."""
    h = RunHistory(tenant="acme", workflow="orders").pending().started().scheduled("charge")
    h.failed("charge").run_failed()
    h.control(control_command(h.run_id, requester="ops"), refusal="replay limit of 3 reached")
    h.replayed(control_command(h.run_id, kind="replay_step", step_id="charge"), ["charge"])
    h.started().scheduled("charge", 2).succeeded("charge", 2).add("run_succeeded", state="succeeded")
    return h


def audit_schemas(engine: sa.Engine) -> list[str]:
    return [s for s in sa.inspect(engine).get_schema_names() if s.startswith("audit_rebuild_")]


def mixed_load(settings: Settings) -> tuple[list[RunHistory], int]:
    """Produce successes, retries, failures, cancellations, replays, rejects and dead letters."""
    events, dlq = create_projector_topics(settings)
    control = Topics(settings.topic_prefix).control
    histories = [succeeded_with_retry(), failed_on_timeout(), cancelled(), replayed_run()]
    histories += [RunHistory(tenant=f"t{i}").pending().started() for i in range(6)]
    first = encoded(*histories)
    produce(settings, events, first[:20])
    produce(
        settings, events, [*first[20:], (b"junk", b"not avro"), *first[:5]]
    )  # a reject, re-emitted events
    intruder = control_command(histories[3].run_id, requester="mallory")
    letters = [
        (None, control_refusal(settings, intruder, "not an operator")),
        (
            None,
            encode(
                "DeadLetter",
                dead_letter_record(
                    "bad_framing", "garbage", original_topic=control, original_value=b"\x00\x01"
                ),
            ),
        ),
        (
            None,
            encode("DeadLetter", dead_letter_record("oversized", "too big", original_value=b"x" * 70_000)),
        ),
        (b"k", b"not a dead letter either"),
    ]
    produce(settings, dlq, letters)
    return histories, len(first) + 5


def test_audit_rebuild_equals_the_live_projection_then_detects_tampering(
    kafka_bootstrap: str,
    database_url: str,
    unique: str,
    engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique)
    histories, _ = mixed_load(settings)
    total_events = sum(len(h.events) for h in histories)
    audit_env(monkeypatch, settings)
    runner = CliRunner()

    with running_projector(settings, batch_size=7):
        wait_for(
            lambda: (
                scalar(engine, "select count(*) from run_events") == total_events
                and scalar(engine, "select count(*) from dead_letters") == 3
                and scalar(engine, "select count(*) from projector_rejects") == 2
            ),
            what="mixed load projected",
        )
        result = runner.invoke(app, ["rebuild", "--json", "--batch-size", "50", "--wait-timeout", "30"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["equal"] is True and report["skipped_runs"] == 0
        counts = {t["table"]: t["live_rows"] for t in report["tables"]}
        assert counts == {
            "runs": 10,
            "steps": 6,
            "attempts": 7,
            "run_events": total_events,
            "control_commands": 3,
            "dead_letters": 3,
            "projector_rejects": 2,
        }
        assert "equals a fresh projection" in result.output
        assert audit_schemas(engine) == []  # dropped

        # Tamper with the live projection: one changed attempt, one deleted dead letter.
        target = histories[0].run_id
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "update attempts set error_message = 'tampered' "
                    "where run_id = :r and step_id = 'fetch' and attempt = 1"
                ),
                {"r": target},
            )
            deleted = conn.execute(
                sa.text("delete from dead_letters where error_kind = 'oversized' returning dlq_id")
            ).scalar_one()
        result = runner.invoke(app, ["rebuild", "--json", "--keep", "--wait-timeout", "30"])
        assert result.exit_code == 1, result.output
        report = json.loads(result.stdout)
        by_table = {t["table"]: t for t in report["tables"]}
        assert report["equal"] is False
        assert [name for name, t in by_table.items() if not t["equal"]] == ["attempts", "dead_letters"]
        attempts = by_table["attempts"]
        assert (attempts["different"], attempts["only_live"], attempts["only_rebuilt"]) == (1, 0, 0)
        assert attempts["samples"] == [
            {"kind": "different", "key": {"run_id": target, "step_id": "fetch", "attempt": 1}}
        ]
        letters = by_table["dead_letters"]
        assert (letters["live_rows"], letters["rebuilt_rows"], letters["only_rebuilt"]) == (2, 3, 1)
        assert letters["samples"] == [{"kind": "only_rebuilt", "key": {"dlq_id": deleted}}]
        assert "differs from the log" in result.output and target in result.output
        kept = audit_schemas(engine)
        assert len(kept) == 1 and kept[0] in result.output
        # The kept schema holds the untampered projection.
        assert scalar(engine, f'select count(*) from "{kept[0]}".dead_letters') == 3
        drop_schema(engine, kept[0])


def test_events_after_the_captured_offsets_are_left_out_of_the_comparison(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique, partitions=2)
    events, dlq = create_projector_topics(settings)
    assert settings.database_url
    ongoing = RunHistory().pending().started().scheduled("a")
    done = RunHistory().pending().started().scheduled("a").succeeded("a")
    done.add("run_succeeded", state="succeeded")
    produce(settings, events, encoded(ongoing, done))
    produce(settings, dlq, [(None, encode("DeadLetter", dead_letter_record("bad_json", "before")))])

    with running_projector(settings):
        wait_for(lambda: scalar(engine, "select count(*) from run_events") == 8, what="first events")
        offsets = capture_end_offsets(settings)
        # The live projector moves on after the capture: the ongoing run advances, a new run starts.
        ongoing.succeeded("a").add("run_succeeded", state="succeeded")
        newcomer = RunHistory().pending()
        produce(settings, events, [*encoded(ongoing)[3:], *encoded(newcomer)])
        produce(settings, dlq, [(None, encode("DeadLetter", dead_letter_record("bad_json", "after")))])
        wait_for(
            lambda: (
                scalar(engine, "select count(*) from run_events") == 11
                and scalar(engine, "select count(*) from dead_letters") == 2
            ),
            what="later events projected",
        )
        schema = new_schema_name()
        create_schema(engine, settings.database_url, schema)
        rebuilt = make_engine(settings.database_url, schema=schema)
        try:
            result = rebuild(settings, rebuilt, offsets, batch_size=3)
            assert result.records == 9
            wait_for_live(engine, default_group_id(settings), result.last_data, timeout_s=30)
            report = compare_schemas(engine, current_schema(engine), schema, offsets.end)
            assert scalar(rebuilt, "select count(*) from runs") == 2  # newcomer not rebuilt
            assert scalar(rebuilt, "select state from runs where run_id = :r", r=ongoing.run_id) == "running"
        finally:
            rebuilt.dispose()
            drop_schema(engine, schema)

    assert report.equal, report.as_dict()
    assert report.skipped_runs == 2  # ongoing and newcomer
    counts = {t.table: (t.live_rows, t.rebuilt_rows) for t in report.tables}
    assert counts["runs"] == (1, 1) and counts["dead_letters"] == (1, 1)
    assert rows(engine, "select count(*) as n from runs")[0].n == 3
