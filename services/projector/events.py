"""From a Kafka record to a :class:`ProjectedEvent` (or a :class:`Rejected` with the reason).

Pure: no I/O. A record written with the current ``RunEvent`` schema is read by a reader compiled
from it (:mod:`.avro_reader`); any other, and any the compiled reader finds amiss, goes through
:func:`services.contracts.serde.decode`, so an older writer schema is resolved to the current
``RunEvent`` and a refusal keeps its reason. ``detail_json`` that is not a JSON object is kept
(under ``"_raw"``) rather than rejected: the event's fields still say what happened.

Total: whatever a record holds, :func:`decode_event` returns an event whose every value the
projection can store (see :mod:`.bounds`: ids hashed when too long, names and messages cut, NUL and
lone surrogates escaped, in the fields and inside the detail), or a :class:`Rejected` with the
reason; it never raises. :class:`Unprojectable` is the one error the mapping itself declares.

Credentials in well-known places of a detail (authorization-like fields, URL userinfo, key-like
query values, ``Bearer …``; :mod:`services.contracts.redaction`) are masked before anything is
stored: ``run_events.detail``, ``attempts.inputs`` and outputs, error messages, trigger data.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias, cast

from services.contracts.catalog import catalog
from services.contracts.records import JsonObject, RunEvent, decode_run_event
from services.contracts.redaction import might_hold_credentials, redact
from services.contracts.serde import ContractError
from services.contracts.text import utf8_safe
from services.projector.avro_reader import Reader, compile_reader
from services.projector.bounds import (
    MAX_JSON_DEPTH,
    MAX_KIND,
    MAX_LONG_ID,
    MAX_MESSAGE,
    MAX_NAME,
    storable_id,
    storable_json,
    storable_optional,
    storable_optional_id,
    storable_text,
)

log = logging.getLogger(__name__)

#: ``extra=`` of a log line about one record: ids by name (their values are of several types).
LogIds: TypeAlias = dict[str, object]


class Unprojectable(ValueError):
    """A record the projection cannot hold; ``reason`` is the reject's kind."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Coordinates:
    """Where a record was read: the projection stores it with the event and in rejects."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class ProjectedEvent:
    """One decoded ``RunEvent`` with its Kafka coordinates."""

    event_id: str
    run_id: str
    tenant: str
    workflow: str
    version: int
    seq: int
    type: str
    step_id: str | None
    attempt: int | None
    state: str | None
    at: datetime
    correlation_id: str
    detail: JsonObject
    raw_detail: Any
    where: Coordinates
    key: bytes | None = field(default=None, repr=False, compare=False)
    payload: bytes | None = field(default=None, repr=False, compare=False)
    #: ``detail_json`` as received when it is a JSON object (stored as is: no re-encoding)
    detail_text: str | None = field(default=None, repr=False, compare=False)

    @property
    def is_run_event(self) -> bool:
        return self.type.startswith("run_")

    def log_ids(self, **more: object) -> LogIds:
        """``extra=`` of a log line about this event."""
        return {
            "tenant": self.tenant,
            "run_id": self.run_id,
            "correlation_id": self.correlation_id,
            "event_type": self.type,
            "seq": self.seq,
            **more,
        }


@dataclass(frozen=True)
class Rejected:
    """A record that cannot be projected, and why (``reason`` is a short machine-readable kind)."""

    where: Coordinates
    reason: str
    message: str
    key: bytes | None = None
    payload: bytes | None = None
    identity: LogIds = field(default_factory=dict)


def from_epoch_ms(value: int | float) -> datetime:
    return datetime.fromtimestamp(value / 1000.0, tz=UTC)


def _time(value: Any) -> datetime | None:
    """A timestamp from a detail field (see :func:`parse_time`); raises for what is none."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return from_epoch_ms(value)
    if isinstance(value, float):
        # Floats below 1e11 are seconds (year < 5138); larger ones milliseconds.
        return datetime.fromtimestamp(value if value < 1e11 else value / 1000.0, tz=UTC)
    if isinstance(value, str) and value:
        text = value.strip()
        if text.lstrip("-").isdigit():
            return from_epoch_ms(int(text))
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def parse_time(value: Any) -> datetime | None:
    """A timestamp from a detail field: epoch milliseconds, epoch seconds (float) or ISO 8601.

    None for anything else, including times no ``datetime`` can hold (a detail is the writer's
    word, not the projector's: a wrong time is left out, not fatal)."""
    try:
        return _time(value)
    except (ValueError, OverflowError, OSError):
        return None


class _Seen(threading.local):
    extreme = False  # a number of the detail being decoded is beyond what the database holds


_SEEN = _Seen()


def _float(text: str) -> float | str:
    number = float(text)
    if not math.isfinite(number):  # 1e400: valid JSON, beyond a double; kept as its text
        _SEEN.extreme = True
        return text
    if number == 0.0 and (len(text) > 24 or "e-" in text or "E-" in text):
        # Maybe an underflow (1e-20000): numeric refuses scales past 16,383 digits; stored as 0.0.
        _SEEN.extreme = True
    return number


# NaN / Infinity become their names; both kinds of strings are then JSON that can be written back.
_DECODER = json.JSONDecoder(parse_float=_float, parse_constant=str)
_ESCAPES = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")  # an escaped NUL or surrogate (a pair is fine)


def _suspect(text: str) -> bool:
    """Whether JSON ``text`` may hold what PostgreSQL refuses (NUL, a lone surrogate, NaN,
    Infinity). Substring tests only (the hot path); a false alarm merely re-encodes the detail."""
    return (
        ("\\u" in text and _ESCAPES.search(text) is not None)
        or "\x00" in text
        or "NaN" in text
        or "Infinity" in text
        or (not text.isascii() and utf8_safe(text) is not text)
    )


def _parse_detail(detail_json: str) -> tuple[JsonObject, Any, bool]:
    """:func:`parse_detail`, and whether ``detail_json`` can be stored as it is."""
    _SEEN.extreme = False
    try:
        value = _DECODER.decode(detail_json)
        openers = detail_json.count("{") + detail_json.count("[")
        if openers > MAX_JSON_DEPTH and _deeper_than(value, MAX_JSON_DEPTH):
            return {}, {"_raw": _raw_text(detail_json)}, False
        as_is = not (_SEEN.extreme or _suspect(detail_json))
        if not as_is:
            value = storable_json(value)
    except (ValueError, RecursionError):
        return {}, {"_raw": _raw_text(detail_json)}, False
    if isinstance(value, dict):
        return value, value, as_is
    return {}, {"_raw": value}, False


def _raw_text(text: str) -> str:
    # Escapes lengthen the text (at most 6 characters for one): nothing is cut here.
    return storable_text(text, 6 * len(text) + 1)


def _deeper_than(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return False


def parse_detail(detail_json: str | None) -> tuple[JsonObject, Any]:
    """(detail as a dict for the projection, detail as stored in ``run_events.detail``).

    Both storable (see :mod:`.bounds`); JSON nested deeper than 512 levels is kept as its text."""
    if detail_json is None:
        return {}, None
    detail, raw, _ = _parse_detail(detail_json)
    return detail, raw


def event_from_record(
    record: RunEvent, where: Coordinates, key: bytes | None = None, payload: bytes | None = None
) -> ProjectedEvent:
    """A :class:`ProjectedEvent` from a decoded ``RunEvent`` record (``payload``: its raw bytes).

    Every value is storable (see :mod:`.bounds`). Raises :class:`Unprojectable` (``bad_event``)
    for a record without a projection: a field missing or of the wrong type, an integer beyond
    PostgreSQL's ``integer``, a time beyond ``datetime``."""
    try:
        return _event_from_record(record, where, key, payload)
    except (KeyError, TypeError, ValueError, OverflowError, OSError, RecursionError) as exc:
        if isinstance(exc, Unprojectable):
            raise
        raise Unprojectable("bad_event", f"{type(exc).__name__}: {exc}") from exc


def int32(value: Any, what: str) -> int:
    """``value`` as an ``integer`` column holds it (bool and float are not integers here)."""
    if type(value) is not int or not -(2**31) <= value < 2**31:
        raise Unprojectable("bad_event", f"{what} is not a 32-bit integer: {storable_text(repr(value), 100)}")
    return value


def _event_from_record(
    record: RunEvent, where: Coordinates, key: bytes | None, payload: bytes | None
) -> ProjectedEvent:
    detail_json = record.get("detail_json")
    detail: JsonObject = {}
    raw: Any = None
    as_is = False
    if detail_json is not None:
        detail, raw, as_is = _parse_detail(str(detail_json))
        if might_hold_credentials(str(detail_json)):
            detail, raw, as_is = _redacted(detail, raw, as_is)
    attempt = record.get("attempt")
    return ProjectedEvent(
        event_id=storable_id(str(record["event_id"])),
        run_id=storable_id(str(record["run_id"])),
        tenant=storable_text(str(record["tenant"]), MAX_NAME),
        workflow=storable_text(str(record["workflow"]), MAX_NAME),
        version=int32(record["version"], "version"),
        seq=int32(record["seq"], "seq"),
        type=storable_text(str(record["type"]), MAX_KIND),
        step_id=storable_optional_id(record.get("step_id")),
        attempt=None if attempt is None else int32(attempt, "attempt"),
        state=storable_optional(record.get("state"), MAX_KIND),
        at=from_epoch_ms(int(record["at"])),
        correlation_id=storable_id(str(record["correlation_id"]), MAX_LONG_ID),
        detail=detail,
        raw_detail=raw,
        where=where,
        key=key,
        payload=payload,
        detail_text=str(detail_json) if as_is else None,
    )


def _redacted(detail: JsonObject, raw: Any, as_is: bool) -> tuple[JsonObject, Any, bool]:
    """The detail (for the projection, and as stored) with credentials masked; stored as is only
    when nothing was masked."""
    clean = redact(raw)
    if clean == raw:
        return detail, raw, as_is
    return (clean if raw is detail else detail), clean, False


def rejected(
    where: Coordinates, reason: str, message: str, key: bytes | None, value: bytes | None
) -> Rejected:
    """A :class:`Rejected` whose reason and message are storable (whatever the error said)."""
    return Rejected(where, storable_text(reason, MAX_KIND), storable_text(message, MAX_MESSAGE), key, value)


#: A reader compiled from the current ``RunEvent`` schema (typed once here, not per record).
_RunEventReader: TypeAlias = Callable[[bytes, int], RunEvent]


@functools.cache
def _current_reader() -> tuple[bytes, _RunEventReader | None]:
    """(wire header of the current ``RunEvent`` schema, its compiled reader)."""
    version = catalog().current["RunEvent"]
    reader: Reader | None = compile_reader(version.parsed)
    return bytes([0]) + version.schema_id.to_bytes(4, "big"), cast("_RunEventReader | None", reader)


def read_run_event(value: bytes | None) -> RunEvent:
    """The ``RunEvent`` record of ``value``: written with the current schema, by its compiled
    reader (:mod:`.avro_reader`); otherwise, or if that reader finds anything amiss, by
    :func:`~services.contracts.serde.decode`. Raises :class:`ContractError` as that does."""
    header, reader = _current_reader()
    if reader is not None and value is not None and value[:5] == header:
        try:
            return reader(value, 5)
        except Exception:  # noqa: S110 - the generic decoder gives the verdict and its reason
            pass
    return decode_run_event(value)


def decode_event(value: bytes | None, key: bytes | None, where: Coordinates) -> ProjectedEvent | Rejected:
    """Decode one record of the events topic; never raises."""
    try:
        record = read_run_event(value)
    except ContractError as exc:
        return rejected(where, exc.kind, exc.message, key, value)
    try:
        return event_from_record(record, where, key, value)
    except Unprojectable as exc:
        return rejected(where, exc.reason, str(exc), key, value)
    except Exception as exc:  # a bug on one odd record must not stop the partition: reject it
        log.exception("event cannot be decoded", extra={"topic": where.topic, "offset": where.offset})
        return rejected(where, "bad_event", f"{type(exc).__name__}: {exc}", key, value)
