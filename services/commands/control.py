"""`switchyard replay`, `cancel` and `approve`: operator commands through the control topic.

Every command is signed with an operator key (``--key FILE`` or ``SWITCHYARD_OPERATOR_KEY_FILE``);
intake verifies it (an operator key of the run's tenant, or a global operator key), the router core
applies each command id once, bounds replays per run, and records the outcome; these commands wait for
that outcome in PostgreSQL (``--wait``) and say plainly whether it was accepted or refused, and why.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from enum import StrEnum
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.commands import options
from services.commands.connections import db_session, kafka_settings
from services.commands.text import console, esc
from services.contracts.records import ControlCommand
from services.control.commands import ControlSender, Kind, command
from services.control.keys import NoOperatorKey, OperatorKey, configured_key

out = console()
err = console(stderr=True)
KEY_HELP = "Operator private key file (default: SWITCHYARD_OPERATOR_KEY_FILE)."
KEY_ID_HELP = "Key id of --key as registered (default: the file name without .key)."


def _key(path: str | None, key_id: str | None) -> OperatorKey:
    try:
        return configured_key(kafka_settings(), path, key_id)
    except NoOperatorKey as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(2) from exc


def _run_tenant(run_id: str) -> str:
    from services.projector.models import Run

    with db_session() as session:
        run = session.get(Run, run_id)
    if run is None:
        err.print(
            f"[red]error:[/] run {esc(run_id)} is not in the history database; pass --tenant to send anyway"
        )
        raise typer.Exit(1)
    return run.tenant


def _wait_outcomes(command_ids: list[str], timeout_s: float) -> dict[str, Any]:
    from services.projector.queries import control_outcome

    outcomes: dict[str, Any] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(outcomes) < len(command_ids):
        with db_session() as session:
            for cid in command_ids:
                if cid not in outcomes:
                    row = control_outcome(session, cid)
                    if row is not None:
                        outcomes[cid] = row
        if len(outcomes) < len(command_ids):
            time.sleep(0.25)
    return outcomes


def _report_one(cmd: ControlCommand, wait: float) -> None:
    if wait <= 0:
        err.print(f"sent {cmd['kind']} {cmd['command_id']} for run {esc(cmd['run_id'])}")
        return
    outcome = _wait_outcomes([cmd["command_id"]], wait).get(cmd["command_id"])
    if outcome is None:
        err.print(
            f"[yellow]sent {cmd['kind']} {cmd['command_id']}; no outcome recorded within {wait:.0f} s[/] "
            "(is the router running? `switchyard runs show` will show it later)"
        )
        raise typer.Exit(3)
    if outcome.outcome == "accepted":
        run_id = esc(cmd["run_id"])
        what = f"{cmd['kind']} of run {run_id}"
        if cmd["kind"] == "approve":
            what = f"{cmd.get('decision')} of step {esc(cmd['step_id'])} of run {run_id}"
        err.print(f"[green]accepted:[/] {what} (command {cmd['command_id']})")
        return
    err.print(f"[red]refused:[/] {esc(outcome.refusal)}")
    raise typer.Exit(1)


def _send_one(
    kind: Kind,
    run_id: str,
    tenant: str | None,
    key: OperatorKey,
    reason: str,
    step: str | None,
    wait: float,
    *,
    decision: str | None = None,
    comment: str | None = None,
) -> None:
    settings = kafka_settings()
    cmd = command(
        kind,
        tenant or _run_tenant(run_id),
        run_id,
        key.key_id,
        reason,
        step_id=step,
        key=key,
        decision=decision,
        comment=comment,
    )
    sender = ControlSender(settings)
    sender.send(cmd)
    sender.flush()
    _report_one(cmd, wait)


def cancel(
    run_id: str = typer.Argument(..., help="The run to cancel."),
    reason: str = typer.Option(..., help="Why (recorded in the run's history)."),
    tenant: str | None = typer.Option(None, help="The run's tenant (default: looked up in the history)."),
    key: str | None = typer.Option(None, help=KEY_HELP),
    key_id: str | None = typer.Option(None, help=KEY_ID_HELP),
    wait: float = typer.Option(
        30.0,
        callback=options.finite_seconds,
        help="Seconds to wait for the router's decision (0: don't wait).",
    ),
) -> None:
    """Cancel a pending or running run: open steps are cancelled, late results ignored."""
    _send_one("cancel", run_id, tenant, _key(key, key_id), reason, None, wait)


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"


def approve(
    run_id: str = typer.Argument(..., help="The run whose approval step is waiting."),
    step_id: str = typer.Argument(..., help="The approval step to decide (its id in the workflow)."),
    decision: Decision = typer.Option(
        ..., help="approve: the step succeeds; reject: it fails (or goes on, with on_reject: continue)."
    ),
    comment: str = typer.Option(
        ..., help="Why (recorded in the run's history, the audit and the step's output)."
    ),
    tenant: str | None = typer.Option(None, help="The run's tenant (default: looked up in the history)."),
    key: str | None = typer.Option(None, help=KEY_HELP),
    key_id: str | None = typer.Option(None, help=KEY_ID_HELP),
    wait: float = typer.Option(
        30.0,
        callback=options.finite_seconds,
        help="Seconds to wait for the router's decision (0: don't wait).",
    ),
) -> None:
    """Decide an approval step that is waiting: approve or reject, with a comment.

    Signed with your operator key; the approver recorded (the step's output
    `by`, the audit) is the verified key id, or a gateway's operator.
    A decision for a step that is not waiting (another kind of step, not
    started, already decided or timed out, a finished run) is refused with
    the reason; each command is applied once.
    Exit 0: accepted, 1: refused, 3: no outcome within --wait."""
    text = comment.strip()
    reason = f"{decision.value}: {text}" if text else decision.value
    _send_one(
        "approve",
        run_id,
        tenant,
        _key(key, key_id),
        reason,
        step_id,
        wait,
        decision=decision.value,
        comment=comment,
    )


def replay(
    run_id: str | None = typer.Argument(
        None, help="The run to replay (omit for a bulk replay with --tenant)."
    ),
    reason: str = typer.Option(..., help="Why (recorded in the run's history)."),
    from_step: str | None = typer.Option(None, help="Replay this step and everything downstream of it."),
    step_only: bool = typer.Option(False, help="With --from-step: replay only that one step."),
    tenant: str | None = typer.Option(
        None, help="Tenant (bulk: required; single: default from the history)."
    ),
    workflow: str | None = typer.Option(None, help="Bulk filter: workflow name."),
    version: int | None = typer.Option(None, help="Bulk filter: workflow version."),
    error_kind: str | None = typer.Option(None, help="Bulk filter: the error kind the run failed with."),
    since: str | None = typer.Option(
        None, help="Bulk filter: runs created at or after (ISO 8601, e.g. 2026-11-26T00:00)."
    ),
    dry_run: bool = typer.Option(
        False, help="Bulk: report how many runs and steps would be replayed; send nothing."
    ),
    key: str | None = typer.Option(None, help=KEY_HELP),
    key_id: str | None = typer.Option(None, help=KEY_ID_HELP),
    wait: float = typer.Option(
        30.0,
        callback=options.finite_seconds,
        help="Seconds to wait for the router's decision(s) (0: don't wait).",
    ),
) -> None:
    """Replay a failed run from its failed steps (or from --from-step), or many failed runs by filter.

    Replayed steps run as new attempts (attempt numbers continue, so idempotency keys
    run:step:attempt stay recognisable to outside systems); each run may be replayed a bounded
    number of times (SWITCHYARD_MAX_REPLAYS_PER_RUN)."""
    if step_only and not from_step:
        err.print("[red]error:[/] --step-only needs --from-step")
        raise typer.Exit(2)
    if run_id is not None:
        kind: Kind = "replay_step" if step_only else "replay_run"
        _send_one(kind, run_id, tenant, _key(key, key_id), reason, from_step, wait)
        return
    if tenant is None:
        err.print("[red]error:[/] give a RUN id, or --tenant (with optional filters) for a bulk replay")
        raise typer.Exit(2)
    signer = None if dry_run else _key(key, key_id)
    _bulk(tenant, workflow, version, error_kind, since, signer, reason, wait)


def _bulk(
    tenant: str,
    workflow: str | None,
    version: int | None,
    error_kind: str | None,
    since: str | None,
    signer: OperatorKey | None,
    reason: str,
    wait: float,
) -> None:
    """``signer`` None: a dry run."""
    from services.projector.queries import failed_runs

    since_at = None
    if since:
        try:
            since_at = dt.datetime.fromisoformat(since)
        except ValueError:
            problem = f"{since!r} is not an ISO 8601 date/time"
            raise typer.BadParameter(problem, param_hint="'--since'") from None
        if since_at.tzinfo is None:
            since_at = since_at.replace(tzinfo=dt.UTC)
    with db_session() as session:
        runs = failed_runs(
            session, tenant, workflow=workflow, version=version, error_kind=error_kind, since=since_at
        )
    steps = sum(len(failed) for _, failed in runs)
    err.print(f"{len(runs)} failed runs, {steps} failed steps match")
    if signer is None or not runs:
        return
    settings = kafka_settings()
    bulk_id = str(uuid.uuid4())
    sender = ControlSender(settings)
    ids = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task("sending replays", total=len(runs))
        for run_id, _ in runs:
            cmd = command(
                "replay_run", tenant, run_id, signer.key_id, reason, correlation_id=bulk_id, key=signer
            )
            sender.send(cmd)
            ids.append(cmd["command_id"])
            progress.advance(task)
        sender.flush()
    err.print(f"sent {len(ids)} replays (bulk correlation id {bulk_id})")
    if wait <= 0:
        return
    outcomes = _wait_outcomes(ids, wait)
    accepted = sum(1 for o in outcomes.values() if o.outcome == "accepted")
    refused = [o for o in outcomes.values() if o.outcome != "accepted"]
    err.print(f"accepted {accepted}, refused {len(refused)}, no decision yet {len(ids) - len(outcomes)}")
    for outcome in refused[:10]:
        err.print(f"  refused {esc(outcome.run_id)}: {esc(outcome.refusal)}")
    if refused or len(outcomes) < len(ids):
        raise typer.Exit(1)
