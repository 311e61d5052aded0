"""Exactly-once operator commands: the ids of the commands a run has had decided, per run.

The router core applies a control command to a run only if its id is new to that run and it was
issued within the staleness window (``SWITCHYARD_CONTROL_WINDOW_S``) of the core's clock. Each
decided id is kept in the run's state (``RunState.commands``: id -> issued-at ms, written to the
changelog with the decision) for as long as the window: past it, the command would be refused
as stale anyway, so forgetting its id never lets it apply twice. The log is bounded: at most
:data:`MAX_COMMANDS` ids per run within one window (more is refused, never forgotten early).

Pure: no I/O. One call site in the router core (:func:`services.router.control.plan`, before a
command is applied).
"""

from __future__ import annotations

from typing import Protocol

from services.contracts.records import ControlCommand
from services.control.verify import Reason, stale_message

#: Commands one run may have decided within one staleness window.
MAX_COMMANDS = 64


class CommandLog(Protocol):
    """What admission reads and writes of a run (``services.router.state.RunState``)."""

    commands: dict[str, int]


def admit(run: CommandLog, command: ControlCommand, now_ms: int, window_ms: int) -> str | None:
    """Record ``command``'s id on ``run`` and return None, or return why it must be refused
    (``duplicate_command``, ``stale_command``, ``too_many_commands``: the first word)."""
    run.commands = {cid: at for cid, at in run.commands.items() if now_ms - at <= window_ms}
    command_id, issued_at = command["command_id"], command.get("issued_at")
    if command_id in run.commands:
        return f"duplicate_command: command {command_id} was already decided for this run; it applies once"
    if not isinstance(issued_at, int) or abs(now_ms - issued_at) > window_ms:
        return f"{Reason.STALE.value}: {stale_message(issued_at, now_ms, window_ms)}"
    if len(run.commands) >= MAX_COMMANDS:
        return (
            f"too_many_commands: {MAX_COMMANDS} commands were decided for this run within "
            f"{window_ms / 1000:.0f} s; send it again later"
        )
    # A new dict, never mutated in place: the core restores the previous one should the
    # decision not be written.
    run.commands = {**run.commands, command_id: issued_at}
    return None
