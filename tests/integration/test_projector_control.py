"""Replays, cancellations, operator commands and dead letters, projected on a real broker and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from services.bus.topics import Topics
from services.commands.runs import app as runs_app
from services.contracts.serde import encode
from services.projector.db import make_engine, upgrade_database
from services.projector.dead_letter_store import DeadLetter, decode_dead_letter
from services.projector.events import Coordinates, ProjectedEvent, decode_event
from services.projector.queries import control_outcome, failed_runs, list_runs
from services.projector.writer import write_batch
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


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def test_replay_cancel_and_refusals_are_projected(
    kafka_bootstrap: str, database_url: str, unique: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(kafka_bootstrap, database_url, unique)
    events_topic, dlq_topic = create_projector_topics(settings)
    control_topic = Topics(settings.topic_prefix).control

    # A run fails at attempt 3, an over-limit replay is refused in its history, then one is accepted.
    replayed = RunHistory(tenant="acme", workflow="orders").pending().started()
    replayed.scheduled("fetch").succeeded("fetch")  # 3, 4
    for attempt in (1, 2):
        replayed.scheduled("charge", attempt)
        replayed.add(
            "step_retrying",
            state="retrying",
            step_id="charge",
            attempt=attempt,
            detail={"error_kind": "http_503", "error_message": "busy"},
        )
    replayed.scheduled("charge", 3).failed("charge", 3).run_failed()  # 9, 10, 11
    refused_cmd = control_command(replayed.run_id, requester="ops", reason="try again")
    replayed.control(refused_cmd, refusal="replay limit of 3 reached")  # 12
    replay_cmd = control_command(replayed.run_id, kind="replay_step", step_id="charge", reason="fixed")
    replayed.replayed(replay_cmd, ["charge"])  # 13 accepted, 14 run_replayed, 15 step_reset
    first_part = len(replayed.events)

    stopped = RunHistory(tenant="acme", workflow="billing").pending().started().scheduled("bill")
    cancel_cmd = control_command(stopped.run_id, kind="cancel", requester="alice", reason="customer left")
    stopped.control(cancel_cmd)
    stopped.add("step_cancelled", state="cancelled", step_id="bill", attempt=1)
    stopped.add("run_cancelled", state="cancelled", detail={"requester": "alice", "reason": "customer left"})

    failing = RunHistory(tenant="acme", workflow="orders").pending().started()
    failing.scheduled("a").scheduled("b").failed("a", error_kind="timeout").failed("b").run_failed("timeout")

    intruder = control_command(replayed.run_id, requester="mallory", tenant="acme", reason="because")
    duplicate = dead_letter_record(
        "bad_json", "trigger is not JSON", original_topic="wf.tenant.acme.triggers"
    )
    dead = [
        (None, control_refusal(settings, intruder, "not an operator of tenant 'acme'")),
        (
            None,
            encode(
                "DeadLetter",
                dead_letter_record(
                    "bad_framing",
                    "control command: not Avro",
                    original_topic=control_topic,
                    original_value=b"{",
                ),
            ),
        ),
        (None, encode("DeadLetter", duplicate)),
        (None, encode("DeadLetter", duplicate)),  # re-sent after a crash: stored once
        (b"x", b"not a dead letter"),
    ]
    produce(settings, events_topic, encoded(replayed, stopped, failing))
    produce(settings, dlq_topic, dead)

    with running_projector(settings) as projector:
        wait_for(
            lambda: (
                scalar(engine, "select count(*) from run_events") == first_part + len(stopped.events) + 7
                and scalar(engine, "select count(*) from dead_letters") == 3
                and scalar(engine, "select count(*) from projector_rejects") == 1
            ),
            what="events and dead letters projected",
        )
        assert {t for t, _ in projector.assigned} == {events_topic, dlq_topic}

        run = rows(engine, "select * from runs where run_id = :r", r=replayed.run_id)[0]
        assert (run.state, run.finished_at, run.error_kind, run.last_seq) == ("pending", None, None, 15)
        assert run.started_at == ms(replayed.at(2))
        charge = rows(
            engine, "select * from steps where run_id = :r and step_id = 'charge'", r=replayed.run_id
        )[0]
        assert (charge.state, charge.attempts, charge.error_kind, charge.finished_at) == (
            "pending",
            3,
            None,
            None,
        )
        assert scalar(engine, "select count(*) from attempts where run_id = :r", r=replayed.run_id) == 4

        # The replay runs: attempt 4 of charge succeeds.
        replayed.started().scheduled("charge", 4).succeeded("charge", 4, output={"paid": True})
        replayed.add("run_succeeded", state="succeeded")
        produce(settings, events_topic, encoded(replayed)[first_part:])
        wait_for(
            lambda: (
                scalar(engine, "select state from runs where run_id = :r", r=replayed.run_id) == "succeeded"
            ),
            what="replayed run succeeded",
        )

    run = rows(engine, "select * from runs where run_id = :r", r=replayed.run_id)[0]
    assert run.finished_at == ms(replayed.at(19)) and run.started_at == ms(replayed.at(2))
    charge = rows(engine, "select * from steps where run_id = :r and step_id = 'charge'", r=replayed.run_id)[
        0
    ]
    assert (charge.state, charge.attempts, charge.output) == ("succeeded", 4, {"paid": True})
    attempts = rows(
        engine,
        "select attempt, state from attempts where run_id = :r and step_id = 'charge' order by 1",
        r=replayed.run_id,
    )
    assert [(a.attempt, a.state) for a in attempts] == [
        (1, "failed"),
        (2, "failed"),
        (3, "failed"),
        (4, "succeeded"),
    ]
    types = [
        r.type
        for r in rows(engine, "select type from run_events where run_id = :r order by seq", r=replayed.run_id)
    ]
    assert types[11:16] == [
        "control_refused",
        "control_accepted",
        "run_replayed",
        "step_reset",
        "run_started",
    ]

    commands = {r.command_id: r for r in rows(engine, "select * from control_commands")}
    assert set(commands) == {
        refused_cmd["command_id"],
        replay_cmd["command_id"],
        cancel_cmd["command_id"],
        intruder["command_id"],
    }
    refused = commands[refused_cmd["command_id"]]
    assert (refused.outcome, refused.refusal, refused.source, refused.requester, refused.reason) == (
        "refused",
        "replay limit of 3 reached",
        "run_history",
        "ops",
        "try again",
    )
    accepted = commands[replay_cmd["command_id"]]
    assert (accepted.outcome, accepted.kind, accepted.step_id, accepted.run_id, accepted.tenant) == (
        "accepted",
        "replay_step",
        "charge",
        replayed.run_id,
        "acme",
    )
    assert accepted.command_correlation_id == replay_cmd["correlation_id"]
    assert accepted.decided_at == ms(replayed.at(13)) and accepted.kafka_topic == events_topic
    assert commands[cancel_cmd["command_id"]].kind == "cancel"
    denied = commands[intruder["command_id"]]
    assert (denied.outcome, denied.source, denied.requester, denied.refusal, denied.kafka_topic) == (
        "refused",
        "dlq",
        "mallory",
        "not an operator of tenant 'acme'",
        dlq_topic,
    )

    letters = {r.error_kind: r for r in rows(engine, "select * from dead_letters")}
    assert set(letters) == {"control_refused", "bad_framing", "bad_json"}
    assert letters["control_refused"].original_topic == control_topic
    assert letters["control_refused"].original_value == encode("ControlCommand", intruder)
    assert letters["bad_framing"].original_value == b"{" and letters["bad_framing"].original_value_size == 1
    assert letters["bad_json"].dlq_id == duplicate["dlq_id"] and letters["bad_json"].failed_at == ms(
        BASE_MS + 500
    )
    reject = rows(engine, "select * from projector_rejects")[0]
    assert (reject.topic, reject.reason, reject.payload) == (dlq_topic, "bad_framing", b"not a dead letter")
    offsets = {(r.topic, r.partition): r.next_offset for r in rows(engine, "select * from consumer_offsets")}
    assert sum(o for (t, _), o in offsets.items() if t == dlq_topic) == len(dead)

    with Session(engine) as session:
        outcome = control_outcome(session, replay_cmd["command_id"])
        assert outcome is not None and outcome.outcome == "accepted" and outcome.refusal is None
        assert control_outcome(session, "nope") is None
        assert failed_runs(session, "acme") == [(failing.run_id, ["a", "b"])]
        assert failed_runs(session, "acme", error_kind="declined") == []
        assert failed_runs(session, "acme", workflow="orders", version=3, error_kind="timeout") == [
            (failing.run_id, ["a", "b"])
        ]
        assert failed_runs(session, "acme", version=4) == []
        assert failed_runs(session, "globex") == []
        assert failed_runs(session, "acme", since=ms(BASE_MS) + timedelta(days=1)) == []
        assert [r.run_id for r in list_runs(session, error_kind="timeout")] == [failing.run_id]
        assert len(list_runs(session, since=ms(BASE_MS))) == 3
        assert list_runs(session, since=ms(BASE_MS) + timedelta(days=1)) == []

    monkeypatch.delenv("SWITCHYARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "250")
    runner = CliRunner()
    shown = runner.invoke(runs_app, ["show", replayed.run_id])
    assert shown.exit_code == 0, shown.output
    for text in (
        "operator commands",
        "replay limit of 3 reached",
        "run_replayed",
        "step_reset",
        "fixed",
        "replay_step",
    ):
        assert text in shown.stdout, text
    as_json = json.loads(runner.invoke(runs_app, ["show", replayed.run_id, "--json"]).stdout)
    assert as_json["replays"] == 1
    # The intruder's command named this run too: refused before reaching it, and shown with it.
    assert [(c["requester"], c["outcome"], c["source"]) for c in as_json["control_commands"]] == [
        ("mallory", "refused", "dlq"),
        ("ops", "refused", "run_history"),
        ("ops", "accepted", "run_history"),
    ]
    listed = runner.invoke(runs_app, ["list", "--error-kind", "timeout", "--since", "2020-01-01", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["run_id"] for r in json.loads(listed.stdout)] == [failing.run_id]
    recent = runner.invoke(runs_app, ["list", "--since", "1h", "--json"])
    assert recent.exit_code == 0 and json.loads(recent.stdout) == []  # the test runs are from 2025
    bad = runner.invoke(runs_app, ["list", "--since", "last tuesday"])
    assert bad.exit_code == 2 and "duration" in bad.output


def _event(record: dict[str, object], offset: int) -> ProjectedEvent:
    ev = decode_event(encode("RunEvent", record), None, Coordinates("wf.events", 0, offset))
    assert isinstance(ev, ProjectedEvent)
    return ev


def _letter(value: bytes, offset: int) -> DeadLetter:
    dl = decode_dead_letter(value, None, Coordinates("wf.dlq", 0, offset), "wf.control")
    assert isinstance(dl, DeadLetter)
    return dl


def test_a_run_history_decision_wins_over_a_dead_lettered_one(database_url: str, engine: sa.Engine) -> None:
    upgrade_database(database_url)
    h = RunHistory().pending()
    cmd = control_command(h.run_id, command_id="cmd-same")
    h.control(cmd)
    refusal = encode(
        "DeadLetter",
        dead_letter_record(
            "control_refused",
            "unknown run",
            original_topic="wf.control",
            original_value=encode("ControlCommand", cmd),
        ),
    )
    later = encode(
        "DeadLetter",
        dead_letter_record(
            "control_refused",
            "again",
            original_topic="wf.control",
            original_value=encode("ControlCommand", cmd),
        ),
    )

    def outcome() -> tuple[str, str, str | None]:
        row = rows(engine, "select * from control_commands")[0]
        return row.source, row.outcome, row.refusal

    write_batch(engine, "c", [_letter(refusal, 0)], {("wf.dlq", 0): 1})
    assert outcome() == ("dlq", "refused", "unknown run")
    write_batch(engine, "c", [_event(h.events[0], 0), _event(h.events[1], 1)], {("wf.events", 0): 2})
    assert outcome() == ("run_history", "accepted", None)
    write_batch(engine, "c", [_letter(later, 1)], {("wf.dlq", 0): 2})
    assert outcome() == ("run_history", "accepted", None)
    # All in one batch, dlq first: the same result (and no "row affected twice" error).
    with engine.begin() as conn:
        conn.execute(sa.text("truncate control_commands, dead_letters, run_events, runs cascade"))
    write_batch(
        engine,
        "c",
        [_letter(refusal, 0), _letter(later, 1), _event(h.events[0], 0), _event(h.events[1], 1)],
        {("wf.dlq", 0): 2, ("wf.events", 0): 2},
    )
    assert outcome() == ("run_history", "accepted", None)
    assert scalar(engine, "select count(*) from dead_letters") == 2
