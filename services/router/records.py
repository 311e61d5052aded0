"""Builders for the records the router produces (history events, commands, changelog).

Dead letters are built by :mod:`services.contracts.dead_letters`, shared with the executor.
JSON inside records is written with orjson (strict: a lone surrogate or an integer beyond 64 bits
raises :class:`~services.contracts.strict_json.StrictJSONError`, never a half-written record).
"""

from __future__ import annotations

import uuid

import orjson

from services.contracts import serde, strict_json
from services.contracts.records import RouterState, RunEvent, StepCommand
from services.router.event_details import EventDetail
from services.router.machine import Command, Event
from services.router.state import RunState

RUN_NAMESPACE = uuid.UUID("0b9e4a53-2f0c-4e3a-8d7e-5a1c3f9b2e64")


def run_id_for(tenant: str, workflow: str, idempotency_key: str) -> str:
    """Deterministic: the same key always yields the same run: uuid5(tenant, workflow, key)."""
    return str(uuid.uuid5(RUN_NAMESPACE, f"{tenant}\x1f{workflow}\x1f{idempotency_key}"))


def event_id(run_id: str, seq: int) -> str:
    """A history event's id: ``<run id>:<seq>``. Deterministic, so a transaction retried after an
    abort writes the same ids and the projector's dedupe (by ``event_id`` and by ``(run_id, seq)``)
    holds; unique, since a run numbers its events once each. Events written before this version
    carry ``uuid5(namespace, "<run id>:<seq>")`` ids (a hash of the same text: ~40 times the cost);
    the two never meet for one event, as an event is written once."""
    return f"{run_id}:{seq}"


def detail_json(detail: EventDetail) -> str:
    """An event's detail: values JSON cannot hold are written as text (as they always were)."""
    try:
        return orjson.dumps(detail, default=str, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise strict_json.StrictJSONError("unencodable", f"event detail cannot be written: {exc}") from exc


def run_event(run: RunState, event: Event, seq: int, now_ms: int) -> bytes:
    """The ``RunEvent`` numbered ``seq`` (the caller advances ``run.seq`` once the step's records
    are all written)."""
    record: RunEvent = {
        "event_id": event_id(run.run_id, seq),
        "run_id": run.run_id,
        "tenant": run.tenant,
        "workflow": run.workflow,
        "version": run.version,
        "seq": seq,
        "type": event.type,
        "step_id": event.step_id,
        "attempt": event.attempt,
        "state": event.state,
        "at": now_ms,
        "correlation_id": run.correlation_id,
        "detail_json": detail_json(event.detail) if event.detail is not None else None,
    }
    return serde.encode("RunEvent", record)


def step_command(run: RunState, command: Command, scopes: list[str], now_ms: int) -> bytes:
    record: StepCommand = {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "workflow": run.workflow,
        "version": run.version,
        "step_id": command.step_id,
        "attempt": command.attempt,
        "action": command.action,
        "inputs_json": strict_json.dumps_str(command.inputs),
        "idempotency_key": command.idempotency_key(run.run_id),
        "deadline": command.deadline_ms,
        "scopes": scopes,
        "correlation_id": run.correlation_id,
        "issued_at": now_ms,
        "reply_partition": run.partition,
    }
    return serde.encode("StepCommand", record)


def changelog(run: RunState, now_ms: int) -> bytes:
    record: RouterState = {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "snapshot_json": run.to_json(),
        "updated_at": now_ms,
    }
    return serde.encode("RouterState", record)
