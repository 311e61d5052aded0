"""`runs list --correlation-id / --idempotency-key` on a real PostgreSQL projection."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from services.commands.runs import app
from services.projector.db import make_engine, upgrade_database
from services.projector.queries import list_runs
from tests.integration.test_projector_cli import project
from tests.integration.test_projector_support import RunHistory

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """Already migrated (a template copy): the projector's start-up migration is a no-op here."""
    return migrated_database_url


@pytest.fixture
def engine(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    upgrade_database(database_url)
    engine = make_engine(database_url)
    monkeypatch.delenv("SWITCHYARD_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", database_url)
    yield engine
    engine.dispose()


def test_runs_are_found_by_correlation_id_and_idempotency_key(engine: sa.Engine) -> None:
    first = RunHistory(tenant="acme").pending(key="order-1")
    second = RunHistory(tenant="acme").pending(key="order-2")
    other_tenant = RunHistory(tenant="globex").pending(key="order-1")
    project(engine, first, second, other_tenant)
    with Session(engine) as session:
        assert [r.run_id for r in list_runs(session, correlation_id=second.correlation_id)] == [second.run_id]
        by_key = {r.run_id for r in list_runs(session, idempotency_key="order-1")}
        assert by_key == {first.run_id, other_tenant.run_id}
        assert [r.run_id for r in list_runs(session, tenant="acme", idempotency_key="order-1")] == [
            first.run_id
        ]
        assert list_runs(session, correlation_id="nope") == []

    runner = CliRunner()
    result = runner.invoke(
        app, ["list", "--idempotency-key", "order-1", "--tenant", "globex"], env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    assert other_tenant.run_id in result.output and first.run_id not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    result = runner.invoke(app, ["list", "--correlation-id", first.correlation_id, "--json"])
    assert result.exit_code == 0, result.output
    assert first.run_id in result.output and second.run_id not in result.output
