"""Stored strings (remote error bodies, tenant data, requesters) are shown literally by the CLI."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from services.commands.runs import _render, runs_table
from services.commands.text import console, esc
from services.projector.models import Attempt, ControlCommandRow, Run, RunEventRow, Step
from services.projector.queries import RunTimeline

HOSTILE = "upstream said [/x] and [bold]shouted[/bold] :warning: [link=http://evil]click[/link]"
AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def rendered(*renderables: object) -> str:
    out = console(file=io.StringIO(), width=400, color_system=None)
    for renderable in renderables:
        out.print(renderable)
    output = out.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(output, str)
    return output


def run(**overrides: object) -> Run:
    fields: dict[str, object] = {
        "run_id": "r-[/x]",
        "tenant": "acme",
        "workflow": "chain[bold]",
        "version": 1,
        "state": "failed",
        "correlation_id": "corr-[/x]",
        "idempotency_key": "key-[bold]",
        "event_type": "go[/]",
        "trigger_data": {"note": HOSTILE},
        "created_at": AT,
        "started_at": AT,
        "finished_at": AT,
        "updated_at": AT,
        "last_seq": 3,
        "error_kind": "http_500",
        "error_message": HOSTILE,
    }
    fields.update(overrides)
    return Run(**fields)


def test_runs_list_shows_markup_in_stored_strings_literally() -> None:
    output = rendered(runs_table([run()]))
    flat = "".join(output.split())  # the table folds long cells: compare without whitespace
    for text in ("r-[/x]", "chain[bold]", "corr-[/x]", "http_500:" + HOSTILE):
        assert "".join(text.split()) in flat


def test_runs_show_renders_every_stored_string_literally() -> None:
    timeline = RunTimeline(
        run=run(),
        steps=[
            Step(
                run_id="r",
                step_id="s[/x]",
                state="failed",
                attempts=1,
                started_at=AT,
                finished_at=AT,
                output=None,
                error_kind="http_500",
                error_message=HOSTILE,
            )
        ],
        attempts=[
            Attempt(
                run_id="r",
                step_id="s[/x]",
                attempt=1,
                state="failed",
                scheduled_at=AT,
                started_at=AT,
                finished_at=AT,
                error_kind="http_500",
                error_message=HOSTILE,
                executor_id="e[/x]",
            )
        ],
        events=[
            RunEventRow(
                event_id="ev",
                run_id="r",
                tenant="acme",
                workflow="w",
                version=1,
                seq=1,
                type="step_failed",
                step_id="s[/x]",
                attempt=1,
                state="failed",
                at=AT,
                correlation_id="c",
                detail={"why": HOSTILE},
            )
        ],
        commands=[
            ControlCommandRow(
                command_id="cmd",
                kind="replay_run",
                requester="ops[/x]@acme",
                run_id="r",
                step_id=None,
                reason="because [bold]",
                outcome="refused",
                refusal="nope [/x]",
                decided_at=AT,
                source="events",
            )
        ],
    )
    out = console(file=io.StringIO(), width=2000, color_system=None)
    _render(timeline, out)
    output = out.file.getvalue()  # type: ignore[attr-defined]
    for text in ("s[/x]", "e[/x]", "ops[/x]@acme", "because [bold]", "refused: nope [/x]", "go[/]", HOSTILE):
        assert text in output


def test_escaped_text_in_a_markup_message_prints_as_is() -> None:
    assert rendered(f"[red]refused:[/] {esc(HOSTILE)}").strip() == f"refused: {HOSTILE}"
