"""`switchyard runs`: list runs and show one run's steps, attempts, operator commands and full
event timeline (replays included).

Reads the projector's tables in PostgreSQL (``DATABASE_URL``); nothing here touches Kafka.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from services.commands import options
from services.commands.text import add_row, console, esc, plain
from services.config import load_settings
from services.projector.db import make_engine
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


@contextmanager
def _session() -> Iterator[Session]:
    url = load_settings().database_url  # not cached: tests point it at their own database
    if not url:
        _err().print(
            "[red]error:[/] no database configured: set DATABASE_URL (or SWITCHYARD_DATABASE_URL), "
            'or run `switchyard dev up` and `eval "$(switchyard dev env)"`.'
        )
        raise typer.Exit(2)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            yield session
    except sa.exc.ProgrammingError as exc:
        if not isinstance(exc.orig, psycopg.errors.UndefinedTable):
            raise
        _err().print(
            "[red]error:[/] the database has no run history tables yet: migrate it "
            "(`switchyard db upgrade`) or start the projector, which migrates on start."
        )
        raise typer.Exit(2) from exc
    except sa.exc.OperationalError as exc:
        _err().print(f"[red]error:[/] cannot reach PostgreSQL: {esc(str(exc.orig).strip())}")
        _err().print("Is it running? `switchyard dev status`; start it with `switchyard dev up`.")
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()


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
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="At most this many (newest first)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List runs, newest first."""
    since_at = options.since(since)
    with _session() as session:
        found = list_runs(
            session,
            tenant=tenant,
            workflow=workflow,
            state=state,
            limit=limit,
            error_kind=error_kind,
            since=since_at,
        )
        if as_json:
            print(json.dumps([as_dict(r) for r in found], indent=2, default=str))
            return
        if not found:
            _err().print("no runs match")
            return
        _out().print(runs_table(found))


def runs_table(found: list[Run]) -> Table:
    """The ``runs list`` table; every stored string is shown literally."""
    table = Table(title=f"{len(found)} run(s)", show_lines=False)
    for column in ("run", "tenant", "workflow", "state", "created", "duration", "correlation", "error"):
        wrap = column in ("workflow", "correlation", "error")
        table.add_column(column, overflow="fold", no_wrap=not wrap)
    for run in found:
        add_row(
            table,
            run.run_id,
            run.tenant,
            f"{run.workflow} v{run.version}",
            _state(run.state),
            _ts(run.created_at),
            _duration(run.started_at or run.created_at, run.finished_at),
            run.correlation_id,
            _error(run.error_kind, run.error_message),
        )
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
    with _session() as session:
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
