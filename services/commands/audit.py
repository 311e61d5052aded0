"""`switchyard audit rebuild`: prove the PostgreSQL projection equals a fresh re-projection of the log.

Re-projects ``<prefix>.events`` and ``<prefix>.dlq`` from their first retained offsets into a fresh
schema of the same database, with the projector's own code, then compares it to the live tables
(see :mod:`services.projector.rebuild` and :mod:`services.projector.compare` for exactly what is
compared and why).

The live projector may keep running: the end offsets are captured first, the rebuild stops there,
and the comparison waits until the live projector's stored ``consumer_offsets`` have reached the
same records; rows that follow from records after the capture (and every run that moved on after
it) are left out of the comparison on both sides. Nothing is paused and nothing live is written.

Exit codes: 0 identical, 1 a difference was found, 2 the audit could not be done (no database,
live tables missing, the live projector not caught up within ``--wait-timeout``, Kafka errors).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
import typer
from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from services.commands import options
from services.commands.text import add_row, esc
from services.commands.text import console as new_console
from services.config import Settings, load_settings
from services.projector.compare import AuditReport, compare_schemas, current_schema, table_specs
from services.projector.db import make_engine
from services.projector.rebuild import (
    LiveProjectorBehind,
    audit_topics,
    capture_end_offsets,
    create_schema,
    drop_schema,
    new_schema_name,
    rebuild,
    wait_for_live,
)
from services.projector.runner import default_group_id

app = typer.Typer(help="Audit the run-history projection against the Kafka log.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """Audit the run-history projection against the Kafka log."""


def _err() -> Console:
    return new_console(stderr=True)


def _progress(console: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


@contextmanager
def _fresh_schema(engine: sa.Engine, url: str, keep: bool, console: Console) -> Iterator[str]:
    schema = new_schema_name()
    create_schema(engine, url, schema)
    try:
        yield schema
    finally:
        if keep:
            console.print(f"kept the rebuilt projection in schema [bold]{schema}[/]")
        else:
            drop_schema(engine, schema)


def _check_live(engine: sa.Engine, schema: str) -> None:
    names = set(sa.inspect(engine).get_table_names(schema=schema))
    missing = sorted({spec.name for spec in table_specs()} - names)
    if missing:
        _err().print(
            f"[red]error:[/] the live database lacks {', '.join(missing)} in schema {schema!r}: "
            "migrate it (`switchyard db upgrade`) or start the projector."
        )
        raise typer.Exit(2)


def run_audit(
    settings: Settings,
    *,
    group_id: str,
    keep: bool,
    wait_timeout_s: float,
    sample: int,
    batch_size: int,
    console: Console,
) -> AuditReport:
    """Capture, rebuild, wait for the live projector, compare; the fresh schema is dropped unless kept."""
    assert settings.database_url
    engine = make_engine(settings.database_url)
    try:
        live_schema = current_schema(engine)
        _check_live(engine, live_schema)
        offsets = capture_end_offsets(settings)
        for (topic, partition), start in sorted(offsets.truncated.items()):
            console.print(
                f"[yellow]warning:[/] {topic}[{partition}] starts at offset {start} (retention): rows "
                "projected from deleted records cannot be rebuilt and will show as differences"
            )
        with _fresh_schema(engine, settings.database_url, keep, console) as schema:
            console.print(f"rebuilding into schema [bold]{schema}[/] up to the end offsets captured now")
            rebuilt_engine = make_engine(settings.database_url, schema=schema)
            try:
                with _progress(console) as progress:
                    task = progress.add_task("re-projecting events + dlq", total=offsets.total or 1)
                    result = rebuild(
                        settings,
                        rebuilt_engine,
                        offsets,
                        batch_size=batch_size,
                        progress=lambda done, total: progress.update(task, completed=done, total=total or 1),
                    )
                    progress.update(task, completed=offsets.total or 1)
                    waiting = progress.add_task(
                        f"live projector ({group_id}) catching up", total=len(result.last_data) or 1
                    )
                    wait_for_live(
                        engine,
                        group_id,
                        result.last_data,
                        wait_timeout_s,
                        progress=lambda done, total: progress.update(
                            waiting, completed=done, total=total or 1
                        ),
                    )
                    progress.update(waiting, completed=len(result.last_data) or 1)
                    comparing = progress.add_task("comparing tables", total=1)
                    report = compare_schemas(engine, live_schema, schema, offsets.end, sample)
                    progress.update(comparing, completed=1)
            finally:
                rebuilt_engine.dispose()
            console.print(f"{result.records} records re-projected")
            return report
    finally:
        engine.dispose()


def _render(report: AuditReport, console: Console) -> None:
    table = Table(title="live projection vs rebuild")
    for column in ("table", "live rows", "rebuilt rows", "live checksum", "rebuilt checksum", "result"):
        table.add_column(column, overflow="fold")
    for t in report.tables:
        if t.equal:
            result = Text("equal", style="green")
        else:
            result = Text(
                f"DIFFERENT: {t.only_live} only live, {t.only_rebuilt} only rebuilt, {t.different} changed",
                style="red",
            )
        add_row(
            table, t.table, str(t.live_rows), str(t.rebuilt_rows), t.live_checksum, t.rebuilt_checksum, result
        )
    console.print(table)
    if report.skipped_runs:
        console.print(f"{report.skipped_runs} run(s) changed after the captured offsets were left out")
    for t in report.tables:
        for kind, key in t.samples:
            console.print(f"  [red]{t.table}[/] {kind}: {esc(json.dumps(key, default=str))}")


@app.command("rebuild")
def rebuild_command(
    keep: bool = typer.Option(False, "--keep", help="Keep the rebuilt schema (its name is printed)."),
    group: str | None = typer.Option(
        None, "--group", help="Consumer group of the live projector (default: <prefix>.projector)."
    ),
    wait_timeout: float = typer.Option(
        300.0,
        "--wait-timeout",
        min=0,
        callback=options.finite_seconds,
        help="Seconds to wait for the live projector to catch up.",
    ),
    sample: int = typer.Option(10, "--sample", min=0, max=1000, help="Differing keys shown per table."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, max=10_000, help="Records per transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Re-project the events and dlq topics into a fresh schema and compare it to the live tables.

    Exit code 0 when identical, 1 on any difference, 2 when the audit could not be done.
    """
    settings = load_settings()
    console = _err()
    if not settings.database_url:
        console.print(
            "[red]error:[/] no database configured: set DATABASE_URL, or run `switchyard dev up` "
            'and `eval "$(switchyard dev env)"`.'
        )
        raise typer.Exit(2)
    events, dlq, _ = audit_topics(settings)
    console.print(f"auditing {events} + {dlq} against PostgreSQL")
    try:
        report = run_audit(
            settings,
            group_id=group or default_group_id(settings),
            keep=keep,
            wait_timeout_s=wait_timeout,
            sample=sample,
            batch_size=batch_size,
            console=console,
        )
    except LiveProjectorBehind as exc:
        console.print(f"[red]error:[/] {esc(exc)} (is it running? raise --wait-timeout?)")
        raise typer.Exit(2) from exc
    except (KafkaException, TimeoutError) as exc:
        console.print(f"[red]error:[/] reading Kafka: {esc(exc)}")
        raise typer.Exit(2) from exc
    except sa.exc.OperationalError as exc:
        console.print(f"[red]error:[/] cannot reach PostgreSQL: {esc(str(exc.orig).strip())}")
        raise typer.Exit(2) from exc
    if as_json:
        out: dict[str, Any] = report.as_dict()
        print(json.dumps(out, indent=2, default=str))
    _render(report, console)
    if not report.equal:
        console.print("[red bold]the live projection differs from the log[/]")
        raise typer.Exit(1)
    console.print("[green bold]the live projection equals a fresh projection of the log[/]")
