"""The engine's Kafka records as types: one ``TypedDict`` per Avro schema in ``schemas/avro/``.

They are the shapes :mod:`services.contracts.serde` writes and reads — plain dicts at run time
(fastavro's own representation, so typing them costs nothing on the hot path) that mypy checks
at every boundary: a producer builds a :class:`StepCommand`, a consumer gets one from
:func:`decode_step_command` and cannot misspell a field. ``tests/unit/contracts/test_records.py``
holds them to the schemas field by field (names, optionality, enum symbols), so a schema change
that forgets its type fails there.

Decoding checks the schema before a record is typed: the ``decode_*`` helpers raise
:class:`~services.contracts.serde.ContractError` exactly like :func:`~services.contracts.serde.decode`.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypeAlias, TypedDict, cast

from services.contracts import serde

#: Tenant-controlled JSON (trigger data, step inputs and outputs, definition documents): its shape
#: is the tenant's, so it stays untyped, but says what it is.
JsonObject: TypeAlias = dict[str, Any]

AttemptStatus: TypeAlias = Literal["succeeded", "failed"]
ControlKind: TypeAlias = Literal["cancel", "replay_run", "replay_step", "replay_bulk", "approve"]


class TriggerEvent(TypedDict):
    """A tenant's trigger, Avro-framed (plain JSON triggers are read into the same shape)."""

    event_type: str
    data_json: str
    idempotency_key: str | None
    correlation_id: str | None
    occurred_at: int | None


class RunParent(TypedDict):
    """The run and step attempt that started a sub-workflow run (and awaits its outcome)."""

    run_id: str
    step_id: str
    attempt: int
    partition: int
    depth: int


class RunRequested(TypedDict):
    """Intake → core: a trigger that matched a workflow, with the run id it will have; or a
    parent run's core → core: a sub-workflow's child run (``parent`` set)."""

    run_id: str
    tenant: str
    workflow: str
    version: int
    event_type: str
    data_json: str
    idempotency_key: str
    correlation_id: str
    requested_at: int
    source: str
    parent: RunParent | None


class StepCommand(TypedDict):
    """Core → executor: run one attempt of one step."""

    run_id: str
    tenant: str
    workflow: str
    version: int
    step_id: str
    attempt: int
    action: str
    inputs_json: str
    idempotency_key: str
    deadline: int
    scopes: list[str]
    correlation_id: str
    issued_at: int
    reply_partition: int


class StepResult(TypedDict):
    """Executor → core: how one attempt ended."""

    run_id: str
    tenant: str
    step_id: str
    attempt: int
    status: AttemptStatus
    output_json: str | None
    error_kind: str | None
    error_message: str | None
    retryable: bool
    started_at: int
    finished_at: int
    correlation_id: str
    executor_id: str
    retry_after_ms: int | None


class ControlCommand(TypedDict):
    """An operator's cancel / replay / approval decision, on the control topic and (authorised) in
    the inbox. ``decision`` and ``comment`` (kind ``approve``) came later: records written before
    them lack them (read with ``get``)."""

    command_id: str
    kind: ControlKind
    requester: str
    tenant: str
    run_id: str | None
    step_id: str | None
    reason: str
    correlation_id: str
    issued_at: int
    filter_json: str | None
    dry_run: bool
    key_id: str | None
    signature: bytes | None
    on_behalf_of: str | None
    decision: NotRequired[str | None]
    comment: NotRequired[str | None]


class RunEvent(TypedDict):
    """One entry of a run's history (``<prefix>.events``), what the projector stores."""

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
    at: int
    correlation_id: str
    detail_json: str | None


class RouterState(TypedDict):
    """The core's changelog: a run's state snapshot, keyed by run id."""

    run_id: str
    tenant: str
    snapshot_json: str
    updated_at: int


class DeadLetter(TypedDict):
    """What could not be processed, with why (``error_kind``) and where it came from."""

    dlq_id: str
    service: str
    error_kind: str
    error_message: str
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_key: bytes | None
    original_value: bytes | None
    attempt: int | None
    tenant: str | None
    correlation_id: str | None
    run_id: str | None
    step_id: str | None
    failed_at: int


class DefinitionRecord(TypedDict):
    """A signed workflow definition version on the compacted definitions topic."""

    tenant: str
    name: str
    version: int
    content_hash: str
    signed_json: str
    published_at: int
    publisher: str


class EventDelivered(TypedDict):
    """Intake → core: a tenant event some workflow waits for (``wait_for``), one copy per inbox
    partition of the tenant's slices (:mod:`services.router.event_waits`)."""

    tenant: str
    event_type: str
    key: str
    data_json: str
    source: str
    correlation_id: str
    delivered_at: int


class TenantRecord(TypedDict):
    """A tenant's configuration on the compacted tenants topic."""

    tenant: str
    config_json: str
    updated_at: int


#: What the router's inbox carries, by the kind :func:`decode_inbox` names.
InboxBody: TypeAlias = RunRequested | StepResult | ControlCommand | EventDelivered

# --- typed decoding: the schema is checked by serde, the shape then is the schema's ------------


def decode_trigger_event(data: bytes | None) -> TriggerEvent:
    return cast(TriggerEvent, serde.decode(data, expected="TriggerEvent")[1])


def decode_step_command(data: bytes | None) -> StepCommand:
    return cast(StepCommand, serde.decode(data, expected="StepCommand")[1])


def decode_control_command(data: bytes | None) -> ControlCommand:
    return cast(ControlCommand, serde.decode(data, expected="ControlCommand")[1])


def decode_run_event(data: bytes | None) -> RunEvent:
    return cast(RunEvent, serde.decode(data, expected="RunEvent")[1])


def decode_router_state(data: bytes | None) -> RouterState:
    return cast(RouterState, serde.decode(data, expected="RouterState")[1])


def decode_definition_record(data: bytes | None) -> DefinitionRecord:
    return cast(DefinitionRecord, serde.decode(data, expected="DefinitionRecord")[1])


def decode_tenant_record(data: bytes | None) -> TenantRecord:
    return cast(TenantRecord, serde.decode(data, expected="TenantRecord")[1])


def decode_dead_letter(data: bytes | None) -> DeadLetter:
    return cast(DeadLetter, serde.decode(data, expected="DeadLetter")[1])


def decode_inbox(data: bytes | None) -> tuple[str, InboxBody]:
    """(kind, body) of an inbox record: ``RunRequested`` / ``StepResult`` / ``ControlCommand`` /
    ``EventDelivered`` and the body of that type (narrow on the kind)."""
    kind, body = serde.decode_inbox(data)
    return kind, cast(InboxBody, body)
