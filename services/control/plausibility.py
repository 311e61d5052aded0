"""Whether a control command's fields can be what an operator sent. Pure: no I/O.

Intake checks this first, before anything is looked up or written: every field of a command ends
up in a dead letter, a run's history or the audit table, so none may be larger than it can
plausibly be. An implausible command is dead-lettered ``invalid_field``.
"""

from __future__ import annotations

from services.contracts.identity import implausible_identity
from services.contracts.records import ControlCommand
from services.router.trigger_records import MAX_ID_LENGTH

#: Plausible sizes of a control command's fields (characters); larger is refused ``invalid_field``.
CONTROL_LIMITS = {
    "command_id": 128,
    "requester": 256,
    "key_id": 128,
    "on_behalf_of": 256,
    "run_id": 128,
    "step_id": 64,
    "reason": 4000,
    "correlation_id": MAX_ID_LENGTH,
    "filter_json": 64 * 1024,
    "decision": 16,
    "comment": 2000,
}


def implausible(command: ControlCommand) -> str | None:
    """Why a control command's fields cannot be what an operator sent, or None."""
    return implausible_identity(command, CONTROL_LIMITS)
