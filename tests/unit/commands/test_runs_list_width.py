"""`runs list` stays readable at 80 columns (whole run ids, no folded slivers) and filters by
correlation id and idempotency key."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from services.commands import runs
from services.commands.text import console
from services.projector.models import Run

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_run(i: int) -> Run:
    return Run(
        run_id=f"7f95df47-1d2c-5f0e-9a7b-{i:012d}",
        tenant="acme-corporation-europe",
        workflow="client-onboarding-with-a-long-name" if i % 2 else "linear-chain",
        version=3,
        state="failed" if i % 2 else "succeeded",
        correlation_id=f"c0ffee00-0000-4000-8000-{i:012d}",
        idempotency_key=f"key-{i}",
        created_at=AT + timedelta(minutes=i),
        started_at=AT,
        finished_at=AT + timedelta(seconds=1.5),
        updated_at=AT,
        last_seq=4,
        error_kind="http_500" if i % 2 else None,
        error_message="upstream said no, with a very long explanation of why" if i % 2 else None,
    )


FOUND = [make_run(i) for i in range(4)]


def render(width: int, **options: Any) -> list[str]:
    out = console(file=io.StringIO(), width=width, color_system=None)
    out.print(runs.runs_table(FOUND, width, **options))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(text, str)
    return text.splitlines()


@pytest.mark.parametrize("width", [80, 100, 120, 170, 240])
def test_every_row_is_one_line_with_its_whole_run_id_and_state(width: int) -> None:
    lines = render(width)
    assert max(len(line) for line in lines) <= width
    for run in FOUND:
        (line,) = [line for line in lines if run.run_id in line]
        assert str(run.state) in line
        assert str(run.workflow)[:8] in line
    header = next(line for line in lines if line.startswith("run "))
    assert header.split()[:3] == ["run", "state", "workflow"]


def test_columns_appear_as_the_terminal_widens() -> None:
    def header(width: int, **options: Any) -> list[str]:
        return next(line for line in render(width, **options) if line.startswith("run ")).split()

    assert header(80) == ["run", "state", "workflow", "created"]
    assert header(120) == ["run", "state", "workflow", "created", "duration", "tenant", "error"]
    assert header(120, hide_tenant=True) == ["run", "state", "workflow", "created", "duration", "error"]
    assert header(200)[-1] == "correlation"
    wide = "\n".join(render(240))
    assert "2026-03-01" in wide and FOUND[1].correlation_id in wide


def test_without_a_width_nothing_is_left_out_or_cut() -> None:
    out = console(file=io.StringIO(), width=400, color_system=None)
    out.print(runs.runs_table(FOUND))
    text = out.file.getvalue()  # type: ignore[attr-defined]
    assert "http_500: upstream said no, with a very long explanation of why" in text
    assert "acme-corporation-europe" in text


def test_runs_list_cli_at_80_columns_passes_the_new_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def fake_list_runs(session: object, **filters: Any) -> list[Run]:
        seen.update(filters)
        return FOUND

    @contextlib.contextmanager
    def no_session() -> Iterator[object]:
        yield object()

    monkeypatch.setattr(runs, "list_runs", fake_list_runs)
    monkeypatch.setattr(runs, "db_session", no_session)
    result = CliRunner().invoke(
        runs.app,
        ["list", "--tenant", "acme", "--correlation-id", "c-1", "--idempotency-key", "k-1"],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert seen["correlation_id"] == "c-1" and seen["idempotency_key"] == "k-1" and seen["tenant"] == "acme"
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert all(any(run.run_id in line for line in lines) for run in FOUND)
