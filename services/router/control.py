"""Control commands inside the router core: which run a command is about, and what it does to it.

Intake forwards only plausible, verified commands (see :mod:`services.control`, the map). For each
one the core (``CoreProcessor._control``)

1. finds the run (:func:`take_up`): in memory, or read back from its history in PostgreSQL when
   memory does not hold it or, for a replay, holds it compacted (the core takes a run read back
   into its partition). A command about no run of its tenant is rejected ``control_refused``,
   saying where the core looked (:func:`no_such_run`): the DLQ, then ``control_commands``;
2. decides (:func:`plan`): the command id is admitted once per run within the staleness window
   (:mod:`services.control.command_log`), then the command is refused with the reason, cancels
   the run, decides an approval step (:func:`services.router.machine.decide`), or replays it
   (its failed and cancelled steps, a step and what follows it, or one step:
   :func:`services.router.machine.steps_to_replay`). The plan is the compute of one
   core step, so the decision — ``control_accepted`` or ``control_refused`` first in the run's
   history (:func:`services.router.machine.control_event`) — and its effects are written together
   or not at all;
3. should the decision not be written, the core forgets the command id and dead-letters the bare
   command, so the audit trail holds what the operator sent.

Everything that changes the core's partitions (taking a run in, stepping, compacting a run read
back for a command that did not replay it) stays in the core. Pure but for the history read (and
its metrics) of :func:`take_up`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

from services.config import Settings
from services.contracts.records import ControlCommand
from services.control import command_log
from services.observability import metrics
from services.router import machine, retention
from services.router.history import HistoryUnavailable, RunHistory
from services.router.machine import Effects
from services.router.rehydrate import NotRehydratable, rehydrate
from services.router.rejection import StepRejected
from services.router.state import RunState
from services.workflow.compiled import CompiledWorkflow

#: The command kinds that replay a run (the others: ``cancel``, ``approve``; ``replay_bulk`` is
#: expanded by the CLI).
REPLAYS = ("replay_run", "replay_step")

Lookup = Callable[[str, str, int], CompiledWorkflow | None]


class Found(NamedTuple):
    """The run a command is about, as :func:`take_up` found it."""

    run: RunState | None
    #: ``run`` was read back from its history just now: the core takes it into its partition.
    read_back: bool
    #: Why the run was not read back when it had to be (history unreadable, or behind the core).
    not_read_back: str | None


def take_up(
    history: RunHistory,
    command: ControlCommand,
    run: RunState | None,
    lookup: Lookup,
    *,
    partition: int,
    arrival: int,
    now_ms: Callable[[], int],
) -> Found:
    """The run ``command`` is about: ``run`` (from memory), or read back from its history when
    memory does not hold it or (for a replay) holds it compacted. A run read back keeps the
    command ids memory decided (memory knows them beyond the history). ``now_ms`` is the core's
    clock, read only when a run is read back."""
    replay = command["kind"] in REPLAYS
    if not history.enabled or (run is not None and (run.compacted is None or not replay)):
        return Found(run, False, None)
    run_id = command.get("run_id") or ""
    started = time.perf_counter()
    outcome = "unavailable"
    try:
        stored = history.load(run_id)
        outcome = "ok"
    except HistoryUnavailable as exc:
        return Found(run, False, f"the history cannot be read now ({exc}); retry later")
    finally:
        metrics.ROUTER_HISTORY_LOOKUPS.labels("load", outcome).inc()
        metrics.ROUTER_HISTORY_LOOKUP_SECONDS.labels("load").observe(time.perf_counter() - started)
    if stored is None or stored.tenant != command["tenant"]:
        if run is None:
            return Found(None, False, None)
        return Found(
            run, False, "the run history does not hold it (yet: retry in a few seconds if it just finished)"
        )
    if run is not None and stored.last_seq < run.seq:
        return Found(
            run,
            False,
            f"the history is not complete yet (it has {stored.last_seq} of the run's {run.seq}"
            " events); retry in a few seconds",
        )
    try:
        fresh = rehydrate(
            stored,
            lookup(stored.tenant, stored.workflow, stored.version),
            partition=partition,
            arrival=arrival,
            now_ms=now_ms(),
        )
    except NotRehydratable as exc:
        if run is not None:
            return Found(run, False, str(exc))
        raise StepRejected(
            "control_refused",
            f"{command['kind']} by {command['requester']}: run {run_id} cannot be taken up again: {exc}",
        ) from exc
    if run is not None:
        fresh.commands = dict(run.commands)
    return Found(fresh, True, None)


def no_such_run(
    command: ControlCommand,
    run: RunState | None,
    settings: Settings,
    history: bool,
    not_read_back: str | None,
) -> StepRejected:
    """The rejection of a command about no run of its tenant, saying where the core looked
    (``history``: whether a run history is configured)."""
    hint = "" if run is None else " (it belongs to another tenant)"
    window = f"finished runs stay in router memory for {settings.finished_run_retention_s:.0f} s"
    if not history:
        where = f"{window} (no run history is configured: DATABASE_URL)"
    elif not_read_back is not None:
        where = f"{window}, and {not_read_back}"
    else:
        where = f"{window}, and the run history does not hold it either"
    return StepRejected(
        "control_refused",
        f"{command['kind']} by {command['requester']}: no run {command.get('run_id')} of tenant "
        f"{command['tenant']}{hint}; {where}",
    )


def plan(
    run: RunState,
    command: ControlCommand,
    now_ms: int,
    settings: Settings,
    not_read_back: str | None,
    workflow_of: Callable[[RunState], CompiledWorkflow | None],
) -> Callable[[], Effects]:
    """What ``command`` does to ``run``, as the compute of one core step: its refusal, the cancel
    or the replay. Admits the command id on ``run`` first (the core puts the previous ids back
    should the step not be written)."""
    why_not = command_log.admit(run, command, now_ms, int(settings.control_window_s * 1000))
    if why_not is not None:
        return partial(_refused, command, why_not)
    kind = command["kind"]
    if kind == "approve":
        grace = settings.deadline_grace_ms
        return partial(machine.decide, run, workflow_of(run), command, now_ms, deadline_grace_ms=grace)
    if kind == "cancel":
        if run.status.terminal:
            return partial(_refused, command, f"run is already {run.status.value}")
        return partial(_cancel, run, command)
    if kind not in REPLAYS:
        return partial(
            _refused, command, f"{kind} is expanded into one command per run by `switchyard replay --tenant`"
        )
    if not_read_back is not None and run.compacted is not None:
        why = f"{retention.refusal(run.compacted)}; reading it back from its history: {not_read_back}"
        return partial(_refused, command, why)
    workflow = workflow_of(run)
    try:
        if workflow is None:
            raise ValueError("the run's definition is no longer verified")
        if run.replays >= settings.max_replays_per_run:
            raise ValueError(f"replay limit of {settings.max_replays_per_run} reached for this run")
        steps = machine.steps_to_replay(run, workflow, kind, command.get("step_id"))
    except ValueError as exc:
        return partial(_refused, command, str(exc))
    return partial(machine.replay, run, steps, command)


def _refused(command: ControlCommand, why: str) -> Effects:
    return Effects(events=[machine.control_event(command, why)])


def _cancel(run: RunState, command: ControlCommand) -> Effects:
    effects = machine.cancel(run, command["requester"], command["reason"])
    effects.events.insert(0, machine.control_event(command))
    return effects
