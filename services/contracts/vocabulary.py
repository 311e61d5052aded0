"""The engine's vocabulary: run and step states, history event types and error kinds.

Every process speaks these words — the router's state machine writes them, executors report
them, the projector stores them, the CLI and console show them — so they are defined once, here.
The values are wire values (they are in history events, state records, dead letters and the
database): add new ones freely, never rename one.

* :class:`RunStatus` / :class:`StepStatus` — with ``terminal`` (the state never changes again,
  short of an operator's replay).
* :class:`EventType` — the ``type`` of every history event on ``<p>.events``.
* :class:`ErrorKind` — every error kind the engine's own code emits, each with ``retryable`` (a
  new attempt of the same work may succeed: the router retries a step failing with it, under the
  step's retry policy; a dead-lettered record is never retried, so its kinds say ``False``), a
  one-line ``meaning`` and its ``scope``. Actions may raise kinds of their own
  (:class:`services.executor.plugins.ActionError`); the built-in actions' kinds are listed too.
* :data:`REDRIVABLE_KINDS` — the dead-letter kinds of a trigger that an operator's re-drive may cure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class RunStatus(StrEnum):
    """The state of one run: ``pending`` (admitted, waiting for a concurrency slot) → ``running``
    ⇄ ``retrying`` (some step waits for its backoff) → ``succeeded`` | ``failed`` | ``cancelled``."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the run is over (only a replay brings it back to ``pending``)."""
        return self in RUN_TERMINAL


class StepStatus(StrEnum):
    """The state of one step within one run."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Whether the step will not change again (short of a replay)."""
        return self in STEP_TERMINAL


RUN_TERMINAL: frozenset[str] = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
STEP_TERMINAL: frozenset[str] = frozenset(
    {StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED}
)


class EventType(StrEnum):
    """The ``type`` of a history event (``RunEvent`` on ``<p>.events``)."""

    RUN_PENDING = "run_pending"  # first event of every run: admitted (carries the trigger)
    RUN_STARTED = "run_started"  # got its concurrency slot
    RUN_RUNNING = "run_running"  # no step waits for a backoff any more
    RUN_RETRYING = "run_retrying"  # some step waits for its backoff
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_REPLAYED = "run_replayed"  # an operator's replay put the finished run back in the queue
    STEP_SCHEDULED = "step_scheduled"  # an attempt's command was sent to the executors
    STEP_SUCCEEDED = "step_succeeded"
    STEP_RETRYING = "step_retrying"  # an attempt failed; another follows after a backoff
    STEP_FAILED = "step_failed"
    STEP_TIMED_OUT = "step_timed_out"  # no result by the deadline (state: retrying or failed)
    STEP_SKIPPED = "step_skipped"  # its condition was false, or a skipped step upstream
    STEP_CANCELLED = "step_cancelled"
    STEP_RESET = "step_reset"  # back to pending by a replay
    STEP_WAITING_FOR_EVENT = "step_waiting_for_event"  # a wait_for step started waiting (state running)
    RESULT_IGNORED = "result_ignored"  # a late, duplicate or unknown attempt's result
    CONTROL_ACCEPTED = "control_accepted"  # an operator's command, applied
    CONTROL_REFUSED = "control_refused"  # an operator's command, refused (the reason is in detail)


#: The events that end a run: exactly one per run (per replay) is in every run's history.
RUN_END_EVENTS: frozenset[str] = frozenset(
    {EventType.RUN_SUCCEEDED, EventType.RUN_FAILED, EventType.RUN_CANCELLED}
)

Scope = Literal["step", "record", "action"]
"""Where a kind appears: ``step`` — a failed attempt or run (history, step rows; retry policies
can name it); ``record`` — a dead letter (a record the engine could not take or write);
``action`` — raised by a built-in action (a step failure too)."""


class ErrorKind(StrEnum):
    """Every error kind the engine's code emits (``retryable``, ``meaning``, ``scope``: see below)."""

    # A step's attempt or a run.
    TIMEOUT = "timeout"
    UNKNOWN_ACTION = "unknown_action"
    PERMISSION_DENIED = "permission_denied"
    CIRCUIT_OPEN = "circuit_open"
    SECRET_MISSING = "secret_missing"  # noqa: S105 (a kind, not a secret)
    SECRET_UNAVAILABLE = "secret_unavailable"  # noqa: S105 (a kind, not a secret)
    INVALID_INPUT = "invalid_input"
    INVALID_OUTPUT = "invalid_output"
    OUTPUT_TOO_LARGE = "output_too_large"
    ACTION_ERROR = "action_error"
    EXECUTOR_ERROR = "executor_error"
    CANCELLED = "cancelled"
    EXPRESSION_ERROR = "expression_error"
    RUN_OUTPUT_TOO_LARGE = "run_output_too_large"
    CONTEXT_TOO_LARGE = "context_too_large"
    CONTEXT_NOT_READ_ONLY = "context_not_read_only"
    FAILED = "failed"
    ERROR = "error"
    CHILD_FAILED = "child_failed"
    CHILD_CANCELLED = "child_cancelled"
    CHILD_UNAVAILABLE = "child_unavailable"
    CHILD_THROTTLED = "child_throttled"
    SUBWORKFLOW_TOO_DEEP = "subworkflow_too_deep"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_TIMED_OUT = "approval_timed_out"
    # A dead-lettered record.
    BAD_FRAMING = "bad_framing"
    BAD_AVRO = "bad_avro"
    UNKNOWN_SCHEMA = "unknown_schema"
    WRONG_SCHEMA = "wrong_schema"
    EMPTY_RECORD = "empty_record"
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    TOO_DEEP = "too_deep"
    UNENCODABLE = "unencodable"
    INVALID_TRIGGER = "invalid_trigger"
    INVALID_FIELD = "invalid_field"
    OVERSIZED = "oversized"
    TENANT_MISMATCH = "tenant_mismatch"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_TENANT = "unknown_tenant"
    TENANT_SUSPENDED = "tenant_suspended"
    FILTER_ERROR = "filter_error"
    INTAKE_ERROR = "intake_error"
    CONTROL_REFUSED = "control_refused"
    INVALID_REQUEST = "invalid_request"
    DUPLICATE_RUN = "duplicate_run"
    UNKNOWN_RUN = "unknown_run"
    UNKNOWN_DEFINITION = "unknown_definition"
    ROUTER_ERROR = "router_error"
    RECORD_TOO_LARGE = "record_too_large"
    BAD_REPLY_PARTITION = "bad_reply_partition"
    POISON_RECORD = "poison_record"
    # Raised by the built-in actions (services/actions/).
    EGRESS_DENIED = "egress_denied"
    HTTP_TIMEOUT = "http_timeout"
    HTTP_TRANSPORT_ERROR = "http_transport_error"
    HTTP_DECODING_ERROR = "http_decoding_error"
    RESPONSE_TOO_LARGE = "response_too_large"
    FIRM_DB_UNCONFIGURED = "firm_db_unconfigured"
    FIRM_DB_UNAVAILABLE = "firm_db_unavailable"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"
    RESULT_TOO_LARGE = "result_too_large"
    WAIT_TIMED_OUT = "wait_timed_out"

    @property
    def retryable(self) -> bool:
        """Whether a new attempt of the same work may succeed (the router retries steps with it)."""
        return ERROR_KINDS[self].retryable

    @property
    def meaning(self) -> str:
        return ERROR_KINDS[self].meaning

    @property
    def scope(self) -> Scope:
        return ERROR_KINDS[self].scope

    @property
    def redrivable(self) -> bool:
        """Whether a trigger dead-lettered with this kind may succeed if sent again unchanged
        (``switchyard dlq redrive``): see :data:`REDRIVABLE_KINDS`."""
        return self in REDRIVABLE_KINDS


@dataclass(frozen=True, slots=True)
class KindInfo:
    retryable: bool
    scope: Scope
    meaning: str


_K = ErrorKind
#: What each error kind means. ``http_<status>`` (the http action's non-2xx answers, retryable
#: for 5xx and 429) and the kinds of tenants' own actions are not listed: they are the action's.
ERROR_KINDS: dict[ErrorKind, KindInfo] = {
    _K.TIMEOUT: KindInfo(True, "step", "no result by the attempt's deadline (executor or router side)"),
    _K.UNKNOWN_ACTION: KindInfo(False, "step", "no action of that name is registered in the executor"),
    _K.PERMISSION_DENIED: KindInfo(False, "step", "the action needs scopes the workflow or tenant lacks"),
    _K.CIRCUIT_OPEN: KindInfo(True, "step", "the circuit breaker of (tenant, action, target) is open"),
    _K.SECRET_MISSING: KindInfo(False, "step", "an input names a secret no provider of the tenant has"),
    _K.SECRET_UNAVAILABLE: KindInfo(True, "step", "a secret provider failed to answer"),
    _K.INVALID_INPUT: KindInfo(
        False, "step", "the step's inputs are not strict JSON or fail the action's Input"
    ),
    _K.INVALID_OUTPUT: KindInfo(
        False, "step", "the action returned something that is not a strict JSON object"
    ),
    _K.OUTPUT_TOO_LARGE: KindInfo(False, "step", "the action's output (or its whole result) is too large"),
    _K.ACTION_ERROR: KindInfo(
        True, "step", "the action raised an unexpected exception (or an unusable kind)"
    ),
    _K.EXECUTOR_ERROR: KindInfo(True, "step", "a fault of the executor itself, or a result it cannot write"),
    _K.CANCELLED: KindInfo(False, "step", "the router gave up on the attempt (run cancelled or failed)"),
    _K.EXPRESSION_ERROR: KindInfo(False, "step", "a step's condition or inputs cannot be evaluated"),
    _K.RUN_OUTPUT_TOO_LARGE: KindInfo(False, "step", "the run's kept step outputs would pass their bound"),
    _K.CONTEXT_TOO_LARGE: KindInfo(False, "step", "a run's context reads returned more than their bound"),
    _K.CONTEXT_NOT_READ_ONLY: KindInfo(
        False, "step", "a context entry names an action that does not declare mutates = False"
    ),
    _K.FAILED: KindInfo(False, "step", "a run failed with no failed step to name the cause"),
    _K.ERROR: KindInfo(False, "step", "the projector's name for a failure event that carries no kind"),
    _K.CHILD_FAILED: KindInfo(
        False, "step", "a workflow step's child run failed (retried only with `workflow.retry_failed`)"
    ),
    _K.CHILD_CANCELLED: KindInfo(False, "step", "a workflow step's child run was cancelled"),
    _K.CHILD_UNAVAILABLE: KindInfo(
        False, "step", "a workflow step names no published, trusted workflow (or version) of the tenant"
    ),
    _K.CHILD_THROTTLED: KindInfo(
        True, "step", "a child run was not started: its tenant has max_pending_runs runs waiting"
    ),
    _K.SUBWORKFLOW_TOO_DEEP: KindInfo(
        False, "step", "a child run would nest deeper than SWITCHYARD_MAX_SUBWORKFLOW_DEPTH"
    ),
    _K.APPROVAL_REJECTED: KindInfo(False, "step", "an operator rejected the approval step"),
    _K.APPROVAL_TIMED_OUT: KindInfo(False, "step", "no decision on the approval step by its timeout"),
    _K.BAD_FRAMING: KindInfo(False, "record", "not Confluent-framed Avro (or empty where a record was due)"),
    _K.BAD_AVRO: KindInfo(False, "record", "the Avro body does not decode with its writer schema"),
    _K.UNKNOWN_SCHEMA: KindInfo(False, "record", "the record's schema id is not known to this build"),
    _K.WRONG_SCHEMA: KindInfo(False, "record", "the record is of another schema than the topic carries"),
    _K.EMPTY_RECORD: KindInfo(False, "record", "an empty trigger (tombstone or zero bytes)"),
    _K.INVALID_JSON: KindInfo(False, "record", "a JSON text or field is not valid strict JSON"),
    _K.INVALID_UTF8: KindInfo(False, "record", "a text, header name or JSON field is not valid UTF-8"),
    _K.TOO_DEEP: KindInfo(False, "record", "a JSON value nests deeper than allowed"),
    _K.UNENCODABLE: KindInfo(False, "record", "a value the engine could not write again as JSON or UTF-8"),
    _K.INVALID_TRIGGER: KindInfo(False, "record", "a trigger that is not an object with event_type and data"),
    _K.INVALID_FIELD: KindInfo(False, "record", "a field of a trigger, command or control record is invalid"),
    _K.OVERSIZED: KindInfo(False, "record", "a record or field is larger than intake accepts"),
    _K.TENANT_MISMATCH: KindInfo(False, "record", "a step result claims another tenant than its run's"),
    _K.BAD_TOPIC: KindInfo(
        False, "record", "the record came from a topic that is not a tenant trigger topic"
    ),
    _K.UNKNOWN_TENANT: KindInfo(False, "record", "the record's tenant is not registered"),
    _K.TENANT_SUSPENDED: KindInfo(False, "record", "the record's tenant is suspended"),
    _K.FILTER_ERROR: KindInfo(False, "record", "a workflow's trigger filter failed on this trigger"),
    _K.INTAKE_ERROR: KindInfo(False, "record", "intake failed on the record for a reason nothing else names"),
    _K.CONTROL_REFUSED: KindInfo(
        False, "record", "an operator's command was refused (unsigned, forged, stale…)"
    ),
    _K.INVALID_REQUEST: KindInfo(False, "record", "a run request the core cannot start"),
    _K.DUPLICATE_RUN: KindInfo(
        False, "record", "a run request for a run already in the run history (same idempotency key)"
    ),
    _K.UNKNOWN_RUN: KindInfo(False, "record", "a step result or command for a run the core does not know"),
    _K.UNKNOWN_DEFINITION: KindInfo(False, "record", "the run's definition is gone or no longer verified"),
    _K.ROUTER_ERROR: KindInfo(False, "record", "the router failed on the record (a bug); the run fails"),
    _K.RECORD_TOO_LARGE: KindInfo(False, "record", "an output record would pass the broker's size limit"),
    _K.BAD_REPLY_PARTITION: KindInfo(
        False, "record", "a step command names a reply partition that does not exist"
    ),
    _K.POISON_RECORD: KindInfo(False, "record", "a record that kept failing its whole batch was set aside"),
    _K.EGRESS_DENIED: KindInfo(False, "action", "http: the target is outside the tenant's egress policy"),
    _K.HTTP_TIMEOUT: KindInfo(True, "action", "http: the request timed out"),
    _K.HTTP_TRANSPORT_ERROR: KindInfo(True, "action", "http: connection or transport failure"),
    _K.HTTP_DECODING_ERROR: KindInfo(False, "action", "http: the response body cannot be decoded"),
    _K.RESPONSE_TOO_LARGE: KindInfo(False, "action", "http: the response body is larger than allowed"),
    _K.FIRM_DB_UNCONFIGURED: KindInfo(False, "action", "firm: no database URL is configured"),
    _K.FIRM_DB_UNAVAILABLE: KindInfo(True, "action", "firm: the database cannot be reached"),
    _K.CONFLICT: KindInfo(False, "action", "firm: the record exists, or the key is another tenant's"),
    _K.NOT_FOUND: KindInfo(False, "action", "firm: no record with that id"),
    _K.RESULT_TOO_LARGE: KindInfo(
        False, "action", "firm: a read's result is larger than SWITCHYARD_FIRM_READ_MAX_BYTES"
    ),
    _K.WAIT_TIMED_OUT: KindInfo(
        False, "step", "a wait_for step saw no matching event by its timeout (on_timeout: fail)"
    ),
}

#: Kinds never retried whatever a step's retry policy says (the same inputs fail the same way).
ALWAYS_NON_RETRYABLE: frozenset[str] = frozenset(
    {ErrorKind.EXPRESSION_ERROR, ErrorKind.APPROVAL_REJECTED, ErrorKind.APPROVAL_TIMED_OUT}
)

#: Dead-letter kinds of a *trigger* that a re-drive (``switchyard dlq redrive``) may cure: the cause
#: lies outside the record (a tenant registered or resumed since, a workflow filter or an intake bug
#: fixed since, a batch fault gone), so the same bytes can be accepted later. Every other record kind
#: describes the record itself (framing, Avro, JSON, UTF-8, shape, size, topic) and fails the same way
#: again, so it is never re-driven; the ``retryable`` flag cannot say this, since a dead letter is
#: never retried automatically (all record kinds are ``retryable=False``).
REDRIVABLE_KINDS: frozenset[str] = frozenset(
    {
        ErrorKind.UNKNOWN_TENANT,
        ErrorKind.TENANT_SUSPENDED,
        ErrorKind.FILTER_ERROR,
        ErrorKind.INTAKE_ERROR,
        ErrorKind.POISON_RECORD,
    }
)
