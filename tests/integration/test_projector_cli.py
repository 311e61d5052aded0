"""`switchyard runs list|show` and the read-side queries, on a real PostgreSQL projection."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from services.commands.runs import app
from services.contracts.serde import encode
from services.projector.db import make_engine, upgrade_database
from services.projector.events import Coordinates, ProjectedEvent, decode_event
from services.projector.queries import list_runs, run_timeline
from services.projector.writer import write_batch
from tests.integration.test_projector_support import RunHistory

pytestmark = pytest.mark.integration


def project(engine: sa.Engine, *histories: RunHistory) -> None:
    items = []
    for h in histories:
        for i, record in enumerate(h.events):
            event = decode_event(encode("RunEvent", record), None, Coordinates("wf.events", 0, i))
            assert isinstance(event, ProjectedEvent)
            items.append(event)
    result = write_batch(engine, "test", items, {("wf.events", 0): len(items)})
    assert not result.rejected and len(result.applied) == len(items)


@pytest.fixture
def projected(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[sa.Engine, list[RunHistory]]]:
    upgrade_database(database_url)
    engine = make_engine(database_url)
    ok = RunHistory(tenant="acme", workflow="orders").pending().started().scheduled("fetch")
    ok.succeeded("fetch").add("run_succeeded", state="succeeded")
    bad = RunHistory(tenant="acme", workflow="billing").pending().started().scheduled("charge")
    bad.add(
        "step_failed",
        state="failed",
        step_id="charge",
        attempt=1,
        detail={"error_kind": "declined", "error_message": "card declined", "executor_id": "exec-9"},
    )
    bad.add("run_failed", state="failed", detail={"step_id": "charge", "error_kind": "declined"})
    other = RunHistory(tenant="globex", workflow="orders").pending()
    project(engine, ok, bad, other)
    monkeypatch.delenv("SWITCHYARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "250")
    yield engine, [ok, bad, other]
    engine.dispose()


def test_queries_filter_and_order(projected: tuple[sa.Engine, list[RunHistory]]) -> None:
    engine, (ok, bad, other) = projected
    with Session(engine) as session:
        assert {r.run_id for r in list_runs(session)} == {ok.run_id, bad.run_id, other.run_id}
        assert [r.run_id for r in list_runs(session, tenant="acme", state="failed")] == [bad.run_id]
        assert [r.run_id for r in list_runs(session, workflow="orders", tenant="globex")] == [other.run_id]
        assert len(list_runs(session, limit=1)) == 1
        timeline = run_timeline(session, bad.run_id)
        assert timeline is not None
        assert [e.seq for e in timeline.events] == [1, 2, 3, 4, 5]
        assert [s.step_id for s in timeline.steps] == ["charge"]
        assert [(a.attempt, a.state, a.executor_id) for a in timeline.attempts] == [(1, "failed", "exec-9")]
        assert run_timeline(session, "nope") is None


def test_list_json_and_table(projected: tuple[sa.Engine, list[RunHistory]]) -> None:
    _, (ok, bad, _) = projected
    runner = CliRunner()
    result = runner.invoke(app, ["list", "--tenant", "acme", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert {r["run_id"]: r["state"] for r in listed} == {ok.run_id: "succeeded", bad.run_id: "failed"}
    table = runner.invoke(app, ["list", "--state", "failed"])
    assert table.exit_code == 0, table.output
    assert bad.run_id in table.stdout and ok.run_id not in table.stdout and "declined" in table.stdout


def test_show_json_and_rich(projected: tuple[sa.Engine, list[RunHistory]]) -> None:
    _, (_, bad, _) = projected
    runner = CliRunner()
    result = runner.invoke(app, ["show", bad.run_id, "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["run"]["state"] == "failed" and shown["run"]["correlation_id"] == bad.correlation_id
    assert shown["steps"][0]["attempt_rows"][0]["error_message"] == "card declined"
    assert [e["type"] for e in shown["events"]] == [
        "run_pending",
        "run_started",
        "step_scheduled",
        "step_failed",
        "run_failed",
    ]
    rich = runner.invoke(app, ["show", bad.run_id])
    assert rich.exit_code == 0, rich.output
    for text in (
        bad.correlation_id,
        "declined: card declined",
        "step_failed",
        "exec-9",
        "attempts",
        "events",
    ):
        assert text in rich.stdout
    missing = runner.invoke(app, ["show", "no-such-run"])
    assert missing.exit_code == 1 and "no run" in missing.output


def test_missing_database_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["list"])
    assert result.exit_code == 2
    assert "switchyard dev up" in result.output and "DATABASE_URL" in result.output
