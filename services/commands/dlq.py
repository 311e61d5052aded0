"""`switchyard dlq list|show|redrive`: dead letters from PostgreSQL, and re-driving triggers.

``list`` and ``show`` read the projector's ``dead_letters`` with the re-drive audit
(``dead_letter_redrives``); ``redrive`` sends dead-lettered triggers again to their tenant's
trigger topic (see :mod:`services.dlq.redrive` for the order of sending and auditing, and
:mod:`services.dlq.eligibility` for what is refused and why).
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from services.bus.topics import Topics
from services.commands.connections import db_session, kafka_settings
from services.commands.text import add_row, console, esc
from services.config import load_settings
from services.contracts.redaction import redact_text
from services.contracts.text import bounded_text
from services.dlq import filters, views
from services.dlq.filters import DeadLetterFilter
from services.dlq.queries import Listed, list_dead_letters, redrives_of, select_for_redrive
from services.dlq.redrive import Outcome, Redriver, Request

app = typer.Typer(help="Dead letters: list, inspect, re-drive dead-lettered triggers.", no_args_is_help=True)
#: From this many dead letters, a re-drive shows a progress bar.
PROGRESS_FROM = 50

TENANT_HELP = "Only this tenant's dead letters."
KIND_HELP = "Only this error kind (e.g. unknown_tenant)."
TOPIC_HELP = "Only dead letters of records from this topic (e.g. wf.tenant.acme.triggers)."
SINCE_HELP = "Failed at or after: ISO 8601 (UTC if naive) or a duration ago (6h, 2d)."
UNTIL_HELP = "Failed before: ISO 8601 (UTC if naive) or a duration ago."


def _err() -> Console:
    return console(stderr=True)


def _filter(
    tenant: str | None,
    error_kind: str | None,
    source_topic: str | None,
    since: str | None,
    until: str | None,
    redriven: bool,
    not_redriven: bool,
) -> DeadLetterFilter:
    try:
        return filters.parse_filter(
            tenant=tenant,
            error_kind=error_kind,
            source_topic=source_topic,
            since=since,
            until=until,
            redriven=redriven,
            not_redriven=not_redriven,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _ts(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _source(topic: str | None, partition: int | None, offset: int | None) -> str:
    if topic is None:
        return "-"
    return f"{topic}[{partition}]@{offset}" if offset is not None else topic


def _listed_dict(item: Listed) -> dict[str, Any]:
    d = item.letter
    return {
        "dlq_id": d.dlq_id,
        "failed_at": d.failed_at.isoformat(),
        "tenant": d.tenant,
        "service": d.service,
        "source_topic": d.original_topic,
        "source_partition": d.original_partition,
        "source_offset": d.original_offset,
        "error_kind": d.error_kind,
        "error_message": redact_text(d.error_message),
        "redrives": item.redrives,
        "last_redriven_at": None if item.last_redriven_at is None else item.last_redriven_at.isoformat(),
    }


def listing_table(found: list[Listed]) -> Table:
    table = Table(
        title=f"{len(found)} dead letter(s)", box=None, pad_edge=False, header_style="bold underline"
    )
    # The id and source stay whole (ids are what `dlq show` and `dlq redrive` take); the reason is cut
    # (in full: `dlq show`, `dlq list --json`).
    for name in ("id", "failed", "tenant", "source", "kind"):
        table.add_column(name, no_wrap=True)
    table.add_column("reason", no_wrap=True, overflow="ellipsis", max_width=60)
    table.add_column("redriven", no_wrap=True)
    for item in found:
        d = item.letter
        redriven = "-" if not item.redrives else f"{item.redrives}x"
        add_row(
            table,
            d.dlq_id,
            _ts(d.failed_at),
            d.tenant or "-",
            _source(d.original_topic, d.original_partition, d.original_offset),
            d.error_kind,
            bounded_text(redact_text(d.error_message), 80),
            redriven,
        )
    return table


@app.command("list")
def list_command(
    tenant: str | None = typer.Option(None, "--tenant", help=TENANT_HELP),
    error_kind: str | None = typer.Option(None, "--error-kind", help=KIND_HELP),
    source_topic: str | None = typer.Option(None, "--source-topic", help=TOPIC_HELP),
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    until: str | None = typer.Option(None, "--until", help=UNTIL_HELP),
    redriven: bool = typer.Option(False, "--redriven", help="Only dead letters re-driven at least once."),
    not_redriven: bool = typer.Option(False, "--not-redriven", help="Only dead letters never re-driven."),
    limit: int = typer.Option(
        filters.DEFAULT_LIMIT, "--limit", min=1, max=filters.MAX_LIST_LIMIT, help="At most this many."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List dead letters, newest first."""
    f = _filter(tenant, error_kind, source_topic, since, until, redriven, not_redriven)
    with db_session() as session:
        found = list_dead_letters(session, f, limit)
    if as_json:
        print(json.dumps([_listed_dict(i) for i in found], indent=2))
        return
    if not found:
        _err().print("no dead letters match")
        return
    console().print(listing_table(found))


def _render_detail(d: dict[str, Any]) -> None:
    out = console()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    source, record = d["source"], d["dead_letter_record"]
    cut = (
        " (stored cut: a re-drive reads it whole from the dead-letter record)"
        if d["original_value_stored_cut"]
        else ""
    )
    for name, value in (
        ("dead letter", d["dlq_id"]),
        ("failed at", d["failed_at"]),
        ("service", d["service"]),
        ("error kind", d["error_kind"]),
        ("reason", d["error_message"]),
        ("tenant", d["tenant"] or "-"),
        ("correlation id", d["correlation_id"] or "-"),
        ("run / step / attempt", " / ".join(str(d[k] or "-") for k in ("run_id", "step_id", "attempt"))),
        ("source", _source(source["topic"], source["partition"], source["offset"])),
        ("dead-letter record", _source(record["topic"], record["partition"], record["offset"])),
        ("original key", "-" if d["original_key"] is None else repr(d["original_key"])),
        ("original size", f"{d['original_value_size']} bytes{cut}"),
        ("original headers", "not kept (a dead letter carries no copy of the original's headers)"),
    ):
        add_row(grid, name, str(value))
    if d["redrivable"]:
        verdict = Text("yes", style="green")
    elif d["redrivable_with_again"]:
        verdict = Text(f"only with --again: {d['refusal']['reason']}", style="yellow")
    else:
        verdict = Text(f"no: {d['refusal']['reason']}", style="red")
    add_row(grid, "re-drivable", verdict)
    out.print(grid)
    value = d["original_value"]
    out.print(Text("original value", style="bold"))
    if value is None:
        out.print("  (none kept)")
    else:
        shown = value["value"] if value["format"] == "text" else json.dumps(value["value"], indent=2)
        cut = " (first 16 KiB)" if value["truncated"] else ""
        out.print(Text(f"  [{value['format']}]{cut}\n{shown}"))
    if d["redrives"]:
        table = Table(title=f"re-driven {len(d['redrives'])} time(s)")
        for name in ("at", "by", "reason", "target", "redrive id"):
            table.add_column(name, overflow="fold")
        for r in d["redrives"]:
            add_row(
                table,
                r["redriven_at"],
                r["requester"],
                r["reason"] or "",
                _source(r["target_topic"], r["target_partition"], r["target_offset"]),
                r["redrive_id"],
            )
        out.print(table)
    else:
        out.print("never re-driven")


@app.command()
def show(
    dlq_id: str = typer.Argument(..., metavar="ID", help="The dead letter's id (as `dlq list` shows it)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Everything about one dead letter, and every re-drive of it.

    Reason, original key and value (credentials redacted), source, correlation id, whether it may
    be re-driven, and each re-drive (who, when, why, where the new record landed)."""
    from services.projector.models import DeadLetterRow

    settings = load_settings()
    with db_session() as session:
        letter = session.get(DeadLetterRow, dlq_id)
        if letter is None:
            _err().print(f"[red]error:[/] no dead letter {esc(repr(dlq_id))} (see `switchyard dlq list`)")
            raise typer.Exit(1)
        found = views.detail(
            letter,
            redrives_of(session, [dlq_id])[dlq_id],
            Topics(settings.topic_prefix),
            settings.max_trigger_bytes,
        )
    if as_json:
        print(json.dumps(found, indent=2))
        return
    _render_detail(found)


def _requester(given: str | None, key: str | None, key_id: str | None) -> str:
    """``--requester``, else the id of the operator key replay/cancel sign with."""
    if given is not None:
        if not given.strip() or len(given) > 256:
            raise typer.BadParameter("must be 1 to 256 characters", param_hint="'--requester'")
        return given
    from services.control.keys import NoOperatorKey, configured_key

    try:
        return configured_key(kafka_settings(), key, key_id).key_id
    except NoOperatorKey:
        _err().print(
            "[red]error:[/] who is re-driving? pass --requester NAME, or --key FILE / "
            "SWITCHYARD_OPERATOR_KEY_FILE (the operator key replay and cancel sign with: "
            "its key id is recorded)"
        )
        raise typer.Exit(2) from None


def _confirm_bulk(count: int, tenant: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        _err().print(
            f"[red]error:[/] {count} dead letters of tenant {esc(tenant)} match: a bulk re-drive needs --yes "
            "when not run from a terminal (see them first with --dry-run)"
        )
        raise typer.Exit(2)
    if not typer.confirm(f"re-drive up to {count} dead letters of tenant {tenant}?", err=True):
        raise typer.Exit(1)


def _outcome_line(o: Outcome) -> Text:
    if o.status == "redriven":
        where = _source(o.topic, o.partition, o.offset)
        return Text.assemble(("redriven   ", "green"), f"{o.dlq_id} -> {where} (redrive {o.redrive_id})")
    if o.status == "would_send":
        key = "-" if o.key is None else repr(views.key_text(o.key))
        return Text.assemble(
            ("would send ", "cyan"), f"{o.dlq_id} -> {o.topic} key {key}, value {o.value_size} bytes"
        )
    style = "red" if o.status == "failed" else "yellow"
    return Text.assemble((f"{o.status:<10} ", style), f"{o.dlq_id}: {o.reason}")


@app.command()
def redrive(
    dlq_ids: list[str] = typer.Argument(None, metavar="ID...", help="Dead letters to re-drive."),
    tenant: str | None = typer.Option(None, "--tenant", help="Bulk: this tenant's dead letters (by filter)."),
    error_kind: str | None = typer.Option(None, "--error-kind", help=KIND_HELP),
    source_topic: str | None = typer.Option(None, "--source-topic", help=TOPIC_HELP),
    since: str | None = typer.Option(None, "--since", help=SINCE_HELP),
    until: str | None = typer.Option(None, "--until", help=UNTIL_HELP),
    redriven: bool = typer.Option(False, "--redriven", help="Bulk filter: only ones re-driven before."),
    not_redriven: bool = typer.Option(
        False, "--not-redriven", help="Bulk filter: only ones never re-driven."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be sent; send nothing."),
    yes: bool = typer.Option(False, "--yes", help="Bulk: do not ask (needed when not on a terminal)."),
    again: bool = typer.Option(False, "--again", help="Also re-drive dead letters re-driven before."),
    reason: str | None = typer.Option(None, "--reason", help="Why (recorded in the audit)."),
    requester: str | None = typer.Option(
        None,
        "--requester",
        help="Who re-drives (default: the key id of the operator key, as replay records).",
    ),
    key: str | None = typer.Option(None, "--key", help="Operator key file whose key id is the requester."),
    key_id: str | None = typer.Option(None, "--key-id", help="Key id of --key (default: the file name)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable outcomes."),
) -> None:
    """Send dead-lettered triggers again to their trigger topic, and audit each one.

    The original key and value go unchanged (plus headers naming the re-drive). Only triggers
    whose error kind may pass now are sent (unknown_tenant, tenant_suspended, filter_error,
    intake_error, poison_record); intake takes them as any trigger (a run that already exists
    for its idempotency key is not started twice)."""
    bulk_filter = _filter(tenant, error_kind, source_topic, since, until, redriven, not_redriven)
    ids = list(dlq_ids or [])
    if ids and not bulk_filter.empty:
        raise typer.BadParameter("give dead-letter IDs or --tenant with filters, not both")
    if not ids and tenant is None:
        raise typer.BadParameter(
            "give dead-letter IDs, or --tenant (with optional filters) for a bulk re-drive"
        )
    if reason is not None and len(reason) > 4000:
        raise typer.BadParameter("at most 4000 characters", param_hint="'--reason'")
    settings = kafka_settings()
    bound = settings.max_redrive_per_call
    if len(ids) > bound:
        _err().print(
            f"[red]error:[/] {len(ids)} ids: at most {bound} per call (SWITCHYARD_MAX_REDRIVE_PER_CALL)"
        )
        raise typer.Exit(2)
    who = "" if dry_run else _requester(requester, key, key_id)
    if not ids:
        assert tenant is not None
        with db_session() as session:
            ids = [row.dlq_id for row in select_for_redrive(session, bulk_filter, bound + 1)]
        if len(ids) > bound:
            _err().print(
                f"[red]error:[/] more than {bound} dead letters match (SWITCHYARD_MAX_REDRIVE_PER_CALL): "
                "narrow the selection (--since/--until, --error-kind, --not-redriven)"
            )
            raise typer.Exit(2)
        if not ids:
            _err().print("no dead letters match")
            return
        if not dry_run:
            _confirm_bulk(len(ids), tenant, yes)
    request = Request(who, reason, again=again, dry_run=dry_run, bulk_id=str(uuid.uuid4()))
    outcomes = _run(settings, ids, request)
    _report(outcomes, request, as_json)


def _run(settings: Any, ids: list[str], request: Request) -> list[Outcome]:
    from services.commands.processes import missing_topic_problem

    def topic_check(producer: Any, topic: str, tenant: str) -> str:
        return missing_topic_problem(producer, topic, tenant, settings.topic_prefix)

    with db_session() as session:
        bind = session.get_bind()
        # the command's own engine: its connection errors end as db_session's one-line messages
        redriver = Redriver(settings, bind if isinstance(bind, sa.Engine) else bind.engine, topic_check)
        try:
            if len(ids) < PROGRESS_FROM:
                return redriver.run(ids, request)
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=_err()) as progress:
                verb = "checking" if request.dry_run else "re-driving"
                task = progress.add_task(verb, total=len(ids))
                return redriver.run(ids, request, lambda n: progress.advance(task, n))
        finally:
            redriver.close()


def _report(outcomes: list[Outcome], request: Request, as_json: bool) -> None:
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    if as_json:
        print(json.dumps({"bulk_id": request.bulk_id, "outcomes": [o.as_dict() for o in outcomes]}, indent=2))
    else:
        out = console()
        for o in outcomes:
            out.print(_outcome_line(o))
        summary = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in sorted(counts.items()))
        sent = "" if request.dry_run else f" (re-drive batch {request.bulk_id})"
        _err().print(f"{summary}{sent}")
    if counts.get("refused") or counts.get("failed"):
        raise typer.Exit(1)
