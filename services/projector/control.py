"""What an operator command's outcome adds to ``control_commands`` — as plain data, no I/O.

Two sources: the run history (``control_accepted`` / ``control_refused`` events, detail
``{command_id, kind, requester, reason, step_id, command_correlation_id[, refusal]}``) and the
dead-letter topic (commands refused before they reached a run: the ``ControlCommand`` is decoded
from the dead letter's ``original_value``; a command that does not decode has no id and is only
a ``dead_letters`` row).

One row per ``command_id``, decided deterministically whatever the interleaving of the two
topics (so that ``switchyard audit rebuild`` reproduces it): the first decision read from the run
history wins (a later ``control_refused`` of the same command, e.g. a resubmission, stays in
``run_events`` only); a run-history decision replaces a dlq one; among dlq records the first wins.

Every text is bounded to its column (see :mod:`.bounds`): a refused command is dead-lettered
*because* a field is absurd (a 300,000-character tenant), and its decision must still be storable.

A command intake refused because it could not be verified (unsigned, forged, unknown key, …: the
refusal starts with a :class:`services.control.verify.Reason`) names a requester nobody vouched
for; it is recorded as ``unverified: <the name it claimed>``, so the audit never shows a forged
name as if it had acted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, TypedDict

from services.contracts.vocabulary import EventType
from services.control.verify import Reason
from services.projector.bounds import (
    MAX_KIND,
    MAX_LONG_ID,
    MAX_MESSAGE,
    MAX_NAME,
    storable_id,
    storable_optional,
    storable_optional_id,
)
from services.projector.dead_letter_store import DeadLetter
from services.projector.events import ProjectedEvent

CONTROL_EVENTS: dict[str, str] = {
    EventType.CONTROL_ACCEPTED: "accepted",
    EventType.CONTROL_REFUSED: "refused",
}
SOURCE_HISTORY: Literal["run_history"] = "run_history"
SOURCE_DLQ: Literal["dlq"] = "dlq"


class ControlRow(TypedDict):
    """A ``control_commands`` row (the columns of :class:`~.models.ControlCommandRow`)."""

    command_id: str
    kind: str
    requester: str
    tenant: str | None
    run_id: str | None
    step_id: str | None
    reason: str | None
    command_correlation_id: str | None
    outcome: str
    refusal: str | None
    decided_at: datetime
    source: Literal["run_history", "dlq"]
    source_id: str
    kafka_topic: str
    kafka_partition: int
    kafka_offset: int


def _name(value: Any) -> str | None:
    return storable_optional(value, MAX_NAME)


def _kind(value: Any) -> str | None:
    return storable_optional(value, MAX_KIND)


def _message(value: Any) -> str | None:
    return storable_optional(value, MAX_MESSAGE)


UNVERIFIED_REFUSALS = tuple(f"{reason.value}: " for reason in Reason)


def _claimed(requester: Any, refusal: str) -> str:
    if refusal.startswith(UNVERIFIED_REFUSALS):
        return _name(f"unverified: {requester}") or "unverified"
    return _name(requester) or "unknown"


def control_from_event(ev: ProjectedEvent) -> ControlRow | None:
    """The ``control_commands`` row of a ``control_accepted``/``control_refused`` event, if any."""
    outcome = CONTROL_EVENTS.get(ev.type)
    command_id = storable_optional_id(ev.detail.get("command_id"))
    if outcome is None or not command_id:
        return None
    d = ev.detail
    return {
        "command_id": command_id,
        "kind": _kind(d.get("kind")) or "unknown",
        "requester": _name(d.get("requester")) or "unknown",
        "tenant": ev.tenant,
        "run_id": ev.run_id,
        "step_id": storable_optional_id(d.get("step_id")) or ev.step_id,
        "reason": _message(d.get("reason")),
        "command_correlation_id": storable_optional_id(d.get("command_correlation_id"), MAX_LONG_ID),
        "outcome": outcome,
        "refusal": _message(d.get("refusal")) if outcome == "refused" else None,
        "decided_at": ev.at,
        "source": SOURCE_HISTORY,
        "source_id": ev.event_id,
        "kafka_topic": ev.where.topic,
        "kafka_partition": ev.where.partition,
        "kafka_offset": ev.where.offset,
    }


def control_from_dead_letter(dl: DeadLetter) -> ControlRow | None:
    """The ``control_commands`` row of a dead-lettered (refused) control command, if it decoded."""
    command = dl.command
    if command is None:
        return None
    return {
        "command_id": storable_id(str(command["command_id"])),
        "kind": _kind(command.get("kind")) or "unknown",
        "requester": _claimed(command.get("requester"), dl.error_message),
        "tenant": _name(command.get("tenant")) or dl.tenant,
        "run_id": storable_optional_id(command.get("run_id")),
        "step_id": storable_optional_id(command.get("step_id")),
        "reason": _message(command.get("reason")),
        "command_correlation_id": storable_optional_id(command.get("correlation_id"), MAX_LONG_ID),
        "outcome": "refused",
        "refusal": dl.error_message,
        "decided_at": dl.failed_at,
        "source": SOURCE_DLQ,
        "source_id": dl.dlq_id,
        "kafka_topic": dl.where.topic,
        "kafka_partition": dl.where.partition,
        "kafka_offset": dl.where.offset,
    }


def first_decisions(rows: Iterable[ControlRow]) -> list[ControlRow]:
    """One row per command id, in read order: the first run-history row, else the first dlq row."""
    chosen: dict[str, ControlRow] = {}
    for row in rows:
        current = chosen.get(row["command_id"])
        if current is None or (current["source"] == SOURCE_DLQ and row["source"] == SOURCE_HISTORY):
            chosen[row["command_id"]] = row
    return list(chosen.values())
