"""`switchyard runs`: list runs and show one run's steps, attempts, operator commands and full
event timeline (replays included).

Reads the projector's tables in PostgreSQL (``DATABASE_URL``); nothing here touches Kafka.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from services.commands import options
from services.commands.connections import db_session
from services.commands.text import add_row, console, esc, plain
from services.projector.models import Run
from services.projector.queries import RunTimeline, as_dict, list_runs, run_timeline

app = typer.Typer(
    help="Run history, as projected into PostgreSQL by the projector.",
    no_args_is_help=True,
)


def _out() -> Console:
    return console()  # created per command, so COLUMNS and redirections apply


def _err() -> Console:
    return console(stderr=True)


STATE_STYLES = {
    "pending": "yellow",
    "running": "cyan",
    "retrying": "magenta",
    "succeeded": "green",
    "failed": "red",
    "timed_out": "red",
    "cancelled": "bright_black",
    "skipped": "bright_black",
    "accepted": "green",
    "refused": "red",
}


def _state(value: str | None) -> Text:
    if value is None:
        return Text("-", style="dim")
    return plain(value, STATE_STYLES.get(value, ""))


def _ts(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S.") + f"{value.microsecond // 1000:03d}"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _error(kind: str | None, message: str | None) -> str:
    if kind is None and message is None:
        return ""
    return f"{kind or 'error'}: {message}" if message else str(kind)


def _short_json(value: Any, limit: int = 80) -> str:
    if value is None:
        return ""
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command("list")
def list_command(
    tenant: str | None = typer.Option(None, "--tenant", help="Only this tenant's runs."),
    workflow: str | None = typer.Option(None, "--workflow", help="Only runs of this workflow."),
    state: str | None = typer.Option(
        None, "--state", help="pending, running, retrying, succeeded, failed or cancelled."
    ),
    error_kind: str | None = typer.Option(
        None, "--error-kind", help="Only runs that failed with this error kind (e.g. timeout)."
    ),
    since: str | None = typer.Option(
        None, "--since", help="Only runs created since: ISO 8601 (UTC if naive) or a duration ago (6h, 2d)."
    ),
    correlation_id: str | None = typer.Option(
        None, "--correlation-id", help="Only runs with this correlation id (as in traces and logs)."
    ),
    idempotency_key: str | None = typer.Option(
        None, "--idempotency-key", help="Only runs started by triggers with this idempotency key."
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List runs, newest first."""
    since_at = options.since(since)
    with db_session() as session:
        found = list_runs(
            session,
            tenant=tenant,
            workflow=workflow,
            state=state,
            limit=limit,
            error_kind=error_kind,
            since=since_at,
            correlation_id=correlation_id,
            idempotency_key=idempotency_key,
        )
        if as_json:
            print(json.dumps([as_dict(r) for r in found], indent=2, default=str))
            return
        if not found:
            _err().print("no runs match")
            return
        out = _out()
        out.print(runs_table(found, out.width, hide_tenant=tenant is not None))


# Columns of `runs list` by priority: (name, narrowest terminal that shows it). The run id is
# always whole (it is what `runs show` takes); below these widths a column is left out rather
# than folded into an unreadable sliver, and names and errors are cut with an ellipsis (in full:
# `runs show`, `runs list --json`).
RUN_COLUMNS: tuple[tuple[str, int], ...] = (
    ("run", 0),
    ("state", 0),
    ("workflow", 0),
    ("created", 0),
    ("duration", 100),
    ("tenant", 110),
    ("error", 120),
    ("correlation", 170),
)
_FIXED = {"run": 36, "state": 9, "duration": 8, "correlation": 36}
_SHARES = {"workflow": 2, "tenant": 1, "error": 3}  # how the width left over is shared


def _created_format(width: int | None) -> str | None:
    """strftime format of "created" at ``width`` (``None``: the full timestamp)."""
    if width is None or width >= 150:
        return None
    return "%m-%d %H:%M:%S" if width >= 100 else "%m-%d %H:%M"


def runs_table(found: list[Run], width: int | None = None, *, hide_tenant: bool = False) -> Table:
    """The ``runs list`` table for a terminal ``width`` columns wide (``None``: every column,
    nothing cut); every stored string is shown literally. ``hide_tenant``: a one-tenant list."""
    shown = [
        name
        for name, needs in RUN_COLUMNS
        if (width is None or width >= needs) and not (hide_tenant and name == "tenant")
    ]
    created_format = _created_format(width)
    created_width = 23 if created_format is None else len(datetime(2000, 1, 1).strftime(created_format))
    limits: dict[str, int | None] = dict.fromkeys(shown)
    if width is not None:
        fixed = sum(_FIXED.get(name, created_width if name == "created" else 0) for name in shown)
        left = max(0, width - 2 * len(shown) - fixed)  # two spaces between and around columns
        shares = sum(_SHARES.get(name, 0) for name in shown)
        for name in shown:
            if name in _SHARES:
                limits[name] = max(6, left * _SHARES[name] // shares)
    # no borders: two spaces between columns are the table's only chrome
    table = Table(title=f"{len(found)} run(s)", box=None, pad_edge=False, header_style="bold underline")
    for name in shown:
        table.add_column(name, no_wrap=True, overflow="ellipsis", max_width=limits[name])
    for run in found:
        created = run.created_at
        cells: dict[str, str | Text] = {
            "run": run.run_id,
            "tenant": run.tenant,
            "workflow": f"{run.workflow} v{run.version}",
            "state": _state(run.state),
            "created": (
                created.astimezone().strftime(created_format) if created_format and created else _ts(created)
            ),
            "duration": _duration(run.started_at or run.created_at, run.finished_at),
            "correlation": run.correlation_id,
            "error": _error(run.error_kind, run.error_message),
        }
        add_row(table, *(cells[name] for name in shown))
    return table


def _render(timeline: RunTimeline, out: Console | None = None) -> None:
    run = timeline.run
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    add_row(summary, "run", run.run_id)
    add_row(summary, "tenant", run.tenant)
    add_row(summary, "workflow", f"{run.workflow} v{run.version}")
    add_row(summary, "state", _state(run.state))
    add_row(summary, "correlation id", run.correlation_id)
    add_row(summary, "trigger", f"{run.event_type or '-'} (idempotency key {run.idempotency_key or '-'})")
    add_row(summary, "trigger data", _short_json(run.trigger_data, 200) or "-")
    add_row(summary, "created", _ts(run.created_at))
    add_row(summary, "started", _ts(run.started_at))
    add_row(summary, "finished", _ts(run.finished_at))
    add_row(summary, "duration", _duration(run.started_at or run.created_at, run.finished_at))
    if run.error_kind or run.error_message:
        add_row(summary, "error", Text(_error(run.error_kind, run.error_message), style="red"))
    add_row(summary, "last seq", str(run.last_seq))
    add_row(summary, "replays", str(timeline.replays))
    out = out or _out()
    out.print(summary)

    steps = Table(title="steps")
    for column in ("step", "state", "attempts", "started", "finished", "duration", "output / error"):
        steps.add_column(column, overflow="fold")
    for step in timeline.steps:
        add_row(
            steps,
            step.step_id,
            _state(step.state),
            str(step.attempts),
            _ts(step.started_at),
            _ts(step.finished_at),
            _duration(step.started_at, step.finished_at),
            _error(step.error_kind, step.error_message) or _short_json(step.output),
        )
    out.print(steps)

    attempts = Table(title="attempts")
    for column in ("step", "#", "state", "scheduled", "started", "finished", "duration", "executor", "error"):
        attempts.add_column(column, overflow="fold")
    for a in timeline.attempts:
        add_row(
            attempts,
            a.step_id,
            str(a.attempt),
            _state(a.state),
            _ts(a.scheduled_at),
            _ts(a.started_at),
            _ts(a.finished_at),
            _duration(a.started_at or a.scheduled_at, a.finished_at),
            a.executor_id or "-",
            _error(a.error_kind, a.error_message),
        )
    out.print(attempts)

    if timeline.commands:
        commands = Table(title="operator commands")
        for column in ("decided", "command", "kind", "step", "requester", "reason", "outcome", "source"):
            commands.add_column(column, overflow="fold")
        for c in timeline.commands:
            outcome = _state(c.outcome)
            if c.refusal:
                outcome.append(f": {c.refusal}")  # Text.append: literal
            add_row(
                commands,
                _ts(c.decided_at),
                c.command_id,
                c.kind,
                c.step_id or "",
                c.requester,
                c.reason or "",
                outcome,
                c.source,
            )
        out.print(commands)

    events = Table(title="events")
    for column in ("seq", "at", "type", "step", "attempt", "state", "detail"):
        events.add_column(column, overflow="fold")
    for e in timeline.events:
        add_row(
            events,
            str(e.seq),
            _ts(e.at),
            e.type,
            e.step_id or "",
            "" if e.attempt is None else str(e.attempt),
            _state(e.state) if e.state else Text(""),
            _short_json(e.detail, 120),
        )
    out.print(events)


def _resolve_prefix(session: Session, run_id: str) -> str:
    """Expand a short id (as `switchyard demo` prints) when exactly one run starts with it."""
    if len(run_id) >= 36:
        return run_id
    matches = list(session.scalars(sa.select(Run.run_id).where(Run.run_id.startswith(run_id)).limit(2)))
    if len(matches) > 1:
        _err().print(f"[red]error:[/] {esc(repr(run_id))} matches several runs; give more of the id")
        raise typer.Exit(1)
    return matches[0] if matches else run_id


@app.command()
def show(
    run_id: str = typer.Argument(..., metavar="RUN", help="The run id, or a unique prefix of it."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show one run: steps, attempts, timings, errors, operator commands (who, why, outcome) and
    the full event timeline, replays included."""
    with db_session() as session:
        run_id = _resolve_prefix(session, run_id)
        timeline = run_timeline(session, run_id)
        if timeline is None:
            _err().print(
                f"[red]error:[/] no run {esc(repr(run_id))} (the projector may not have seen it yet)"
            )
            raise typer.Exit(1)
        if as_json:
            print(json.dumps(timeline.as_dict(), indent=2, default=str))
            return
        _render(timeline)
