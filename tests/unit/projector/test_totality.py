"""The pure mapping is total: whatever a record holds, it is projected storably or rejected.

Arbitrary field values (huge, NUL, lone surrogates, any JSON with NaN / 1e400 / deep nesting,
integers of any size) go through decoding (events.py, dead_letter_store.py), the row changes
(changes.py, rowplan.py) and the control decisions (control.py). The only exception allowed is
the mapping's declared :class:`Unprojectable`; every string emitted fits its column's bound
(``bounds.COLUMN_LIMITS``) and holds nothing PostgreSQL refuses; every JSON value can be written.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts import records
from services.contracts.serde import ContractError, encode
from services.projector.bounds import COLUMN_LIMITS, MAX_KEY_BYTES
from services.projector.changes import attempt_change, run_skeleton, run_update, step_change
from services.projector.control import control_from_dead_letter, control_from_event, first_decisions
from services.projector.dead_letter_store import (
    MAX_ORIGINAL_VALUE,
    DeadLetter,
    dead_letter_from_record,
    decode_dead_letter,
)
from services.projector.events import (
    Coordinates,
    ProjectedEvent,
    Rejected,
    Unprojectable,
    decode_event,
    event_from_record,
)
from services.projector.rowplan import run_composite

WHERE = Coordinates("wf.events", 0, 1)
DLQ = Coordinates("wf.dlq", 0, 2)
CONTROL_TOPIC = "wf.control"
JSON_COLUMNS = {"trigger_data", "output", "inputs", "detail"}

# Any code point, surrogates and NUL included; and very long strings, built cheaply.
any_char = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None)
short_text = st.text(any_char, max_size=20)
long_text = st.builds(
    lambda c, n: c * n, st.text(any_char, min_size=1, max_size=3), st.integers(200, 100_000)
)
texts = st.one_of(short_text, short_text, long_text, st.sampled_from(["", "acme", "\x00", "\ud800", "…"]))
ints = st.one_of(st.integers(-3, 10), st.integers(), st.sampled_from([2**31 - 1, 2**31, -(2**31) - 1]))
floats = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)
detail_keys = st.sampled_from(
    [
        "trigger",
        "error_kind",
        "error_message",
        "executor_id",
        "idempotency_key",
        "inputs",
        "output",
        "started_at",
        "finished_at",
        "deadline",
        "command_id",
        "kind",
        "requester",
        "reason",
        "refusal",
        "step_id",
        "command_correlation_id",
        "event_type",
        "data",
    ]
)
details = st.dictionaries(detail_keys, st.one_of(json_values, st.dictionaries(detail_keys, json_values)))


def _dump(value: Any) -> str:
    # ensure_ascii: lone surrogates and NUL travel as escapes, as another writer's JSON could.
    return json.dumps(value, allow_nan=True)


detail_json = st.one_of(
    st.none(),
    details.map(_dump),
    json_values.map(_dump),
    texts,
    st.integers(1, 2000).map(lambda n: "[" * n + "]" * n),
    st.just('{"a": NaN, "b": 1e400, "c": "\\u0000", "d": "\\ud800", "e": "\\ud83d\\ude00"}'),
    st.sampled_from(
        ["1e100000", "-1e131072", "1e-20000", "0.0", "1" * 400 + ".5", "0." + "0" * 400 + "1"]
    ).map(lambda number: f'{{"n": {number}, "m": [{number}]}}'),
)
event_types = st.one_of(
    st.sampled_from(
        [
            "run_pending",
            "run_started",
            "run_failed",
            "run_succeeded",
            "step_scheduled",
            "step_succeeded",
            "step_failed",
            "step_retrying",
            "step_timed_out",
            "step_reset",
            "step_cancelled",
            "control_accepted",
            "control_refused",
        ]
    ),
    texts,
)
optional_texts = st.one_of(st.none(), texts)
times = st.one_of(st.integers(0, 2**41), st.integers())


@st.composite
def run_event_records(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "event_id": draw(texts),
        "run_id": draw(texts),
        "tenant": draw(texts),
        "workflow": draw(texts),
        "version": draw(ints),
        "seq": draw(ints),
        "type": draw(event_types),
        "step_id": draw(optional_texts),
        "attempt": draw(st.one_of(st.none(), ints)),
        "state": draw(st.one_of(st.none(), st.sampled_from(["running", "failed", "succeeded"]), texts)),
        "at": draw(times),
        "correlation_id": draw(texts),
        "detail_json": draw(detail_json),
    }


@st.composite
def commands(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "command_id": draw(texts),
        "kind": draw(st.one_of(st.sampled_from(["cancel", "replay_run"]), texts, ints)),
        "requester": draw(st.one_of(texts, json_values)),
        "tenant": draw(texts),
        "run_id": draw(optional_texts),
        "step_id": draw(optional_texts),
        "reason": draw(st.one_of(texts, json_values)),
        "correlation_id": draw(texts),
    }


@st.composite
def dead_letter_records(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "dlq_id": draw(texts),
        "service": draw(texts),
        "error_kind": draw(texts),
        "error_message": draw(texts),
        "original_topic": draw(st.one_of(st.none(), st.just(CONTROL_TOPIC), texts)),
        "original_partition": draw(st.one_of(st.none(), ints)),
        "original_offset": draw(st.one_of(st.none(), ints)),
        "original_key": draw(st.one_of(st.none(), st.binary(max_size=40), st.just(b"k" * 100_000))),
        "original_value": draw(st.one_of(st.none(), st.binary(max_size=40))),
        "attempt": draw(st.one_of(st.none(), ints)),
        "tenant": draw(optional_texts),
        "correlation_id": draw(optional_texts),
        "run_id": draw(optional_texts),
        "step_id": draw(optional_texts),
        "failed_at": draw(times),
    }


# -- what "storable" means, checked independently of services.projector.bounds -----------------


def _plain(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _json_ok(value: Any) -> None:
    encoded = json.dumps(value, allow_nan=False)  # NaN / inf would raise
    stack = [json.loads(encoded)]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            assert _plain(item), item[:50]
        elif isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_row(table: str, row: Mapping[str, object]) -> None:
    for column, value in row.items():
        if column in JSON_COLUMNS:
            _json_ok(value)
        elif isinstance(value, str):
            limit = COLUMN_LIMITS[table][column]
            assert len(value) <= limit, (table, column, len(value))
            assert _plain(value), (table, column, value[:50])
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int):
            assert -(2**63) <= value < 2**63, (table, column)
            if column in ("version", "seq", "attempt", "attempts", "last_seq"):
                assert -(2**31) <= value < 2**31, (table, column)
        elif value is not None:
            assert isinstance(value, datetime) and value.tzinfo is not None, (table, column, value)


def _check_event(ev: ProjectedEvent) -> None:
    _check_row(
        "run_events",
        {
            "event_id": ev.event_id,
            "run_id": ev.run_id,
            "tenant": ev.tenant,
            "workflow": ev.workflow,
            "version": ev.version,
            "seq": ev.seq,
            "type": ev.type,
            "step_id": ev.step_id,
            "attempt": ev.attempt,
            "state": ev.state,
            "at": ev.at,
            "correlation_id": ev.correlation_id,
            "detail": ev.raw_detail,
        },
    )
    if ev.detail_text is not None:  # stored as received: PostgreSQL parses it
        assert "\\u0000" not in ev.detail_text and "NaN" not in ev.detail_text
        assert "Infinity" not in ev.detail_text and _plain(ev.detail_text)
        # numeric holds exponents up to 131,071 and scales up to 16,383 digits
        assert re.search(r"[eE][+-]?\d{5}|\.0{300}", ev.detail_text) is None
        assert json.loads(ev.detail_text) == ev.detail
    _check_row("runs", run_skeleton(ev))
    _check_row("runs", run_update(ev))
    plan = run_composite([ev])
    assert plan is not None
    _check_row("runs", plan.sets)
    step = step_change(ev)
    if step is not None:
        _check_row("steps", {**step.key, **step.values})
    attempt = attempt_change(ev)
    if attempt is not None:
        _check_row("attempts", {**attempt.key, **attempt.values})
    control = control_from_event(ev)
    if control is not None:
        _check_row("control_commands", control)
        assert first_decisions([control]) == [control]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_event_records())
def test_any_run_event_is_projected_storably_or_declared_unprojectable(record: dict[str, Any]) -> None:
    try:
        # whatever a record holds (the strategy breaks the schema's types too): the code must hold
        ev = event_from_record(cast(records.RunEvent, record), WHERE, b"key", b"payload")
    except Unprojectable as exc:
        assert exc.reason == "bad_event"
        return
    _check_event(ev)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_event_records())
def test_decoding_any_encodable_run_event_never_raises(record: dict[str, Any]) -> None:
    try:
        value = encode("RunEvent", record)
    except (ContractError, ValueError, TypeError, OverflowError):
        return  # not an Avro RunEvent (surrogates, 64-bit ints): no such record on the topic
    ev = decode_event(value, None, WHERE)
    if isinstance(ev, Rejected):
        _check_row("projector_rejects", {"reason": ev.reason, "message": ev.message})
    else:
        _check_event(ev)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_an_event_or_a_reject(value: bytes) -> None:
    for decoded in (decode_event(value, None, WHERE), decode_dead_letter(value, None, DLQ, CONTROL_TOPIC)):
        assert isinstance(decoded, Rejected | ProjectedEvent | DeadLetter)


def _check_dead_letter(dl: DeadLetter) -> None:
    row: dict[str, Any] = dict(dl.row())
    key, value, size = row.pop("original_key"), row.pop("original_value"), row.pop("original_value_size")
    assert key is None or (isinstance(key, bytes) and len(key) <= MAX_KEY_BYTES)
    assert value is None or (isinstance(value, bytes) and len(value) <= min(MAX_ORIGINAL_VALUE, size))
    _check_row("dead_letters", row)
    control = control_from_dead_letter(dl)
    if control is not None:
        _check_row("control_commands", control)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dead_letter_records(), st.one_of(st.none(), commands()))
def test_any_dead_letter_is_projected_storably_or_declared_unprojectable(
    record: dict[str, Any], command: dict[str, Any] | None
) -> None:
    try:
        # whatever a record holds (the strategy breaks the schema's types too): the code must hold
        dl = dead_letter_from_record(cast(records.DeadLetter, record), DLQ, CONTROL_TOPIC)
    except Unprojectable as exc:
        assert exc.reason == "bad_dead_letter"
        return
    _check_dead_letter(dl)
    if command is not None:  # a refused control command, whatever it holds (even non-strings)
        _check_dead_letter(DeadLetter(**{**dl.__dict__, "command": command, "original_topic": CONTROL_TOPIC}))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands(), dead_letter_records())
def test_a_refused_command_in_a_dead_letter_decodes_to_a_storable_decision(
    command: dict[str, Any], record: dict[str, Any]
) -> None:
    cmd = {
        **command,
        "kind": "cancel",
        "requester": str(command["requester"]),
        "reason": str(command["reason"]),
        "issued_at": 0,
        "filter_json": None,
        "dry_run": False,
    }
    try:
        original = encode("ControlCommand", cmd)
    except (ContractError, ValueError, TypeError):
        return  # not Avro-encodable (lone surrogates): no such command on the topic
    letter = {**record, "original_topic": CONTROL_TOPIC, "original_value": original, "failed_at": 0}
    try:
        dl = dead_letter_from_record(cast(records.DeadLetter, letter), DLQ, CONTROL_TOPIC)
    except Unprojectable:
        return
    assert dl.command is not None or not cmd["command_id"]
    _check_dead_letter(dl)
