"""Which dead letters may be re-driven, and the record a re-drive sends (pure: no I/O).

A re-drive sends a dead-lettered *trigger* again, unchanged, to the tenant trigger topic it came
from. It is refused, with the reason, when that cannot help or cannot be done faithfully:

* the source is not a tenant trigger topic (a step failure: ``switchyard replay``; an operator
  command refused: send a new one) or not one of this prefix;
* the error kind describes the record itself (bad framing, JSON, size, …): the same bytes fail the
  same way (:data:`~services.contracts.vocabulary.REDRIVABLE_KINDS` lists the kinds that may pass);
* no complete copy of the original was kept (none, or cut by the dead letter); a copy the projector
  stored cut (it keeps 64 KiB) is read back whole from the dead-letter record on the topic;
* it was re-driven before and ``again`` is not given;
* with the re-drive headers it would pass the trigger size limit intake applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from services.bus.record_budget import record_size
from services.bus.topics import Topics
from services.contracts.vocabulary import REDRIVABLE_KINDS, ErrorKind
from services.projector.bounds import MAX_KEY_BYTES
from services.projector.models import DeadLetterRow

#: Header naming the re-drive (``dead_letter_redrives.redrive_id``) on the record a re-drive sends.
REDRIVE_ID_HEADER = "switchyard-redrive-id"
#: Header naming the dead letter the re-driven record is a copy of.
REDRIVEN_FROM_HEADER = "switchyard-redriven-from"
#: What the dead-letter builder appends when it cut or dropped the copy of the original.
_CUT_NOTES = ("original value truncated", "original key truncated", "original not kept")

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class PastRedrive:
    """A previous re-drive of a dead letter, as the refusal quotes it."""

    redriven_at: datetime
    requester: str


@dataclass(frozen=True)
class Refusal:
    """Why a dead letter is not re-driven; ``code`` is stable (JSON output), ``reason`` is for people."""

    code: str
    reason: str


@dataclass(frozen=True)
class Outgoing:
    """The record a re-drive sends: the original's key and value, to its original topic."""

    dlq_id: str
    tenant: str
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers


def redrive_headers(redrive_id: str, dlq_id: str) -> Headers:
    return [(REDRIVE_ID_HEADER, redrive_id.encode()), (REDRIVEN_FROM_HEADER, dlq_id.encode())]


def _source_refusal(letter: DeadLetterRow, topics: Topics) -> Refusal | None:
    topic = letter.original_topic
    if topic is None:
        return Refusal("no_source", "the dead letter names no source record (nothing to send again)")
    if topics.tenant_of(topic) is not None:
        return None
    if topic in (topics.control, topics.inbox) or letter.error_kind == ErrorKind.CONTROL_REFUSED:
        return Refusal(
            "not_a_trigger",
            f"an operator command or run request refused on {topic}, not a trigger: send a new "
            "command (`switchyard replay` / `switchyard cancel`)",
        )
    if letter.run_id is not None:
        return Refusal(
            "not_a_trigger",
            f"a record of run {letter.run_id} from {topic}, not a trigger: to run failed steps again "
            f"use `switchyard replay {letter.run_id}`",
        )
    return Refusal("not_a_trigger", f"{topic} is not a tenant trigger topic of prefix {topics.prefix!r}")


def _kind_refusal(kind: str) -> Refusal | None:
    if kind in REDRIVABLE_KINDS:
        return None
    known = kind in ErrorKind.__members__.values()
    meaning = f" ({ErrorKind(kind).meaning})" if known else ""
    return Refusal(
        "never_succeeds",
        f"error kind {kind}{meaning} is about the record itself: sent again unchanged it fails the "
        f"same way (re-drivable kinds: {', '.join(sorted(REDRIVABLE_KINDS))})",
    )


def stored_copy_cut(letter: DeadLetterRow) -> bool:
    """Whether the projector kept only the head of the original value (the dead-letter record on
    the topic holds it whole: :mod:`services.dlq.full_copy` reads it back)."""
    return letter.original_value is not None and letter.original_value_size > len(letter.original_value)


def _copy_refusal(letter: DeadLetterRow, read_back: bool) -> Refusal | None:
    value = letter.original_value
    if value is None:
        return Refusal("no_copy", "no copy of the original record was kept")
    if stored_copy_cut(letter) and not read_back:
        return Refusal(
            "truncated_copy",
            f"only {len(value)} of the original's {letter.original_value_size} bytes were stored: "
            "sending that would be another record",
        )
    key = letter.original_key
    if any(note in letter.error_message for note in _CUT_NOTES) or (
        key is not None and len(key) >= MAX_KEY_BYTES
    ):
        return Refusal("truncated_copy", "the copy of the original was cut when it was dead-lettered")
    return None


def refusal(
    letter: DeadLetterRow,
    topics: Topics,
    previous: Sequence[PastRedrive] = (),
    *,
    again: bool = False,
    max_trigger_bytes: int | None = None,
    read_back: bool = False,
) -> Refusal | None:
    """Why ``letter`` must not be re-driven, or None if it may be. ``read_back``: a copy the
    projector stored cut is fine, the full one will be read back from the dead-letter topic."""
    found = (
        _source_refusal(letter, topics)
        or _kind_refusal(letter.error_kind)
        or _copy_refusal(letter, read_back)
    )
    if found is not None:
        return found
    if previous and not again:
        last = max(previous, key=lambda p: p.redriven_at)
        times = "once" if len(previous) == 1 else f"{len(previous)} times"
        return Refusal(
            "already_redriven",
            f"already re-driven {times}, last at {last.redriven_at.isoformat(timespec='seconds')} by "
            f"{last.requester} (pass --again to send it once more)",
        )
    if max_trigger_bytes is not None:
        headers = redrive_headers("x" * 36, letter.dlq_id)  # a redrive id is a 36-character uuid
        size = record_size(letter.original_key, None, headers) + letter.original_value_size
        if size > max_trigger_bytes:
            return Refusal(
                "too_large",
                f"with the re-drive headers the record is {size} bytes, over the trigger limit of "
                f"{max_trigger_bytes} (SWITCHYARD_MAX_TRIGGER_BYTES)",
            )
    return None


def outgoing(
    letter: DeadLetterRow, topics: Topics, redrive_id: str, full_value: bytes | None = None
) -> Outgoing:
    """The record re-driving ``letter`` sends (call only when :func:`refusal` found none);
    ``full_value``: the original read back whole when the stored copy was cut."""
    topic = letter.original_topic
    tenant = topics.tenant_of(topic) if topic is not None else None
    value = full_value if full_value is not None else letter.original_value
    if topic is None or tenant is None or value is None or len(value) != letter.original_value_size:
        raise ValueError(f"dead letter {letter.dlq_id} is not a re-drivable trigger with its whole copy")
    return Outgoing(
        dlq_id=letter.dlq_id,
        tenant=tenant,
        topic=topic,
        key=letter.original_key,
        value=value,
        headers=redrive_headers(redrive_id, letter.dlq_id),
    )
