"""Pydantic models of a workflow definition (the document authors write) and of its retry policy.

These models own the *shape* of a definition: field names, types, ranges, patterns. Cross-field
rules (the DAG, expressions, known actions, size limits) live in :mod:`services.workflow.validation`.
All models are strict (no coercion of ``"3"`` into ``3``), frozen and forbid unknown fields, so a
typo such as ``neeeds:`` is an error, never a silently ignored key. Their JSON Schema is exported
to ``schemas/workflow-definition.schema.json`` (see :mod:`services.workflow.schema_export`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from services.contracts.vocabulary import ALWAYS_NON_RETRYABLE

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

#: Reserved words of CEL; a step id must not be one, or ``steps.<id>`` would not parse.
CEL_RESERVED_WORDS = frozenset(
    {
        "as", "break", "const", "continue", "else", "false", "for", "function", "if", "import",
        "in", "let", "loop", "namespace", "null", "package", "return", "true", "var", "void", "while",
    }
)  # fmt: skip

#: Integers in inputs must survive a round trip through JSON numbers (and RFC 8785 signing).
MAX_SAFE_INTEGER = 2**53 - 1
#: Upper bound of a step timeout: one day.
MAX_TIMEOUT_SECONDS = 24 * 60 * 60.0
#: Upper bound of anything a step waits for in the router (a wait, an approval, a child run): 366 days.
MAX_WAIT_SECONDS = 366 * 24 * 60 * 60.0
#: How long a `workflow:` step waits for its child run unless it says otherwise: one day.
SUBWORKFLOW_TIMEOUT_SECONDS = 24 * 60 * 60.0
#: Upper bound of an author's text shown to people (an approval's prompt).
MAX_TEXT_CHARS = 2000
#: Default of ``wait_for.timeout``: seven days.
DEFAULT_WAIT_FOR_SECONDS = 7 * 24 * 60 * 60.0

STEP_ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
WORKFLOW_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
#: A ``context:`` entry's name (``context.<name>`` in expressions). Shorter than a step id: its
#: hidden step is ``context.<name>``, and step ids travel in records bounded to 64 characters.
CONTEXT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
#: Prefix of the hidden step that reads one ``context:`` entry. A dot never occurs in a step id
#: (STEP_ID_PATTERN), so these ids cannot collide with an author's steps.
CONTEXT_STEP_PREFIX = "context."
#: Most ``context:`` entries one definition may declare (each is one read at run start).
MAX_CONTEXT_ENTRIES = 16
ACTION_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
ERROR_KIND_PATTERN = r"^[a-z][a-z0-9_.]{0,63}$"
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$"

StepId = Annotated[str, StringConstraints(pattern=STEP_ID_PATTERN)]
ErrorKind = Annotated[str, StringConstraints(pattern=ERROR_KIND_PATTERN)]
Scope = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,63}:[a-z][a-z0-9_.-]{0,63}$")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, StringConstraints(max_length=256)]
Expression = Annotated[str, StringConstraints(min_length=1)]

_CONFIG = ConfigDict(extra="forbid", strict=True, frozen=True)


class RetryPolicy(BaseModel):
    """How a failed step attempt is retried: bounded exponential backoff with jitter."""

    model_config = _CONFIG

    max_attempts: int = Field(3, ge=1, le=100, description="Total attempts including the first one.")
    initial_backoff: float = Field(
        1.0, gt=0, le=3600, description="Delay in seconds after the first failure."
    )
    max_backoff: float = Field(
        60.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Cap on any delay, in seconds."
    )
    multiplier: float = Field(2.0, ge=1, le=10, description="Growth factor of the delay per attempt.")
    jitter: float = Field(
        0.2, ge=0, le=1, description="Fraction of the delay that is randomised (0 = none, 1 = full jitter)."
    )
    non_retryable: list[ErrorKind] = Field(
        default_factory=list, description="Error kinds that fail the step at once (e.g. `permission_denied`)."
    )

    @model_validator(mode="after")
    def _initial_within_max(self) -> RetryPolicy:
        if self.initial_backoff > self.max_backoff:
            raise ValueError(
                f"initial_backoff ({self.initial_backoff}) is larger than max_backoff ({self.max_backoff}); "
                "lower initial_backoff or raise max_backoff"
            )
        return self

    def backoff(self, attempt: int, rand: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based) before the next one.

        ``delay = min(max_backoff, initial_backoff * multiplier ** (attempt - 1))``, then jitter
        scales it into ``[delay * (1 - jitter), delay]`` using ``rand`` in ``[0, 1)``, so the result is
        a pure function of its arguments and never exceeds ``max_backoff``.
        """
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        if not 0.0 <= rand < 1.0:
            raise ValueError(f"rand must be in [0, 1), got {rand}")
        try:
            raw = self.initial_backoff * self.multiplier ** (attempt - 1)
        except OverflowError:
            raw = math.inf
        delay = min(self.max_backoff, raw)
        return delay * (1.0 - self.jitter * (1.0 - rand))

    def should_retry(self, attempt: int, error_kind: str) -> bool:
        """Whether failed attempt number ``attempt`` (1-based) with ``error_kind`` gets another attempt."""
        if error_kind in ALWAYS_NON_RETRYABLE or error_kind in self.non_retryable:
            return False
        return attempt < self.max_attempts


def _check_json_numbers(value: JsonValue, where: str = "") -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value}{where} is outside ±2^53-1; pass it as a string")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"number {value}{where} is not finite")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json_numbers(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json_numbers(item, f"{where}.{key}")


class Trigger(BaseModel):
    """Which events start a run: an event type and an optional CEL filter over ``trigger``."""

    model_config = _CONFIG

    event: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(
        description="Event type that starts a run, e.g. `client.created`."
    )
    filter: Expression | None = Field(
        None,
        description="CEL expression over `trigger` that must be true for the event to start a run, "
        "e.g. `trigger.data.amount > 1000`.",
    )


class SubWorkflow(BaseModel):
    """A `workflow:` step: run another published workflow of the same tenant as a child run and
    wait for it (its outcome is the step's; see :mod:`services.router.subworkflows`)."""

    model_config = _CONFIG

    name: Annotated[str, StringConstraints(pattern=WORKFLOW_NAME_PATTERN)] = Field(
        description="Name of a published workflow of the same tenant."
    )
    version: int | None = Field(
        None,
        ge=1,
        le=2**31 - 1,
        description="Version to run; absent: the latest trusted version when the step starts (then "
        "pinned: the child run keeps it, the step's output records it).",
    )
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="The child run's trigger data (`trigger.data` in the child), templated like an "
        "action's inputs (no secrets: the child references its own).",
    )
    timeout: float = Field(
        SUBWORKFLOW_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds one attempt waits for its child run (default one day, at most 366 days); "
        "past it the child is cancelled and the step times out.",
    )
    retry_failed: bool = Field(
        False,
        description="Retry a failed or timed-out child under the step's `retry` policy (each attempt "
        "starts a new child run); default: a failed child fails the step at once.",
    )

    @field_validator("inputs")
    @classmethod
    def _json_numbers(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _check_json_numbers(value)
        return value


OnTimeout = Literal["fail", "continue"]


class WaitSpec(BaseModel):
    """A durable pause the router keeps itself: for ``duration`` seconds, or until the time ``until``
    evaluates to. No executor is involved; the wake-up is a timer in the run's state."""

    model_config = _CONFIG

    duration: float | None = Field(
        None, gt=0, le=MAX_WAIT_SECONDS, description="Seconds to wait (at most 366 days)."
    )
    until: Expression | None = Field(
        None,
        description="CEL expression over `trigger` and `steps` (not a template) giving an RFC 3339 "
        "timestamp string or a CEL timestamp, evaluated when the step starts; a past time ends the "
        "wait at once.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> WaitSpec:
        if (self.duration is None) == (self.until is None):
            raise ValueError("a wait needs exactly one of `duration` (seconds) or `until` (a CEL timestamp)")
        return self


class ApprovalSpec(BaseModel):
    """A human decision the run waits for: an operator approves or rejects with
    ``switchyard approve``; with no decision by ``timeout`` seconds, ``on_timeout`` applies."""

    model_config = _CONFIG

    prompt: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)] = Field(
        description="What the approver is asked (shown in the run's history and the CLI)."
    )
    timeout: float = Field(
        7 * 24 * 60 * 60.0,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for a decision (default 7 days, at most 366 days).",
    )
    on_timeout: OnTimeout = Field(
        "fail",
        description="No decision in time: `fail` the step (`approval_timed_out`) or `continue` "
        "(the step succeeds with decision `timeout`).",
    )
    on_reject: OnTimeout = Field(
        "fail",
        description="Rejected: `fail` the step (`approval_rejected`, never retried) or `continue` "
        "(the step succeeds with decision `reject`).",
    )


class WaitFor(BaseModel):
    """A step that waits for one of the tenant's events (run by the router, no executor)."""

    model_config = _CONFIG

    event: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(
        description="Event type to wait for, as sent to the tenant's trigger topic, e.g. `document.signed`."
    )
    match: Expression | None = Field(
        None,
        description="CEL condition over `event` (`event.type`, `event.data`, `event.key`), `trigger` and "
        "`steps` that an event must satisfy, e.g. `event.data.engagement_id == trigger.data.engagement_id`; "
        "without it any event of that type matches.",
    )
    timeout: float = Field(
        DEFAULT_WAIT_FOR_SECONDS,
        gt=0,
        le=MAX_WAIT_SECONDS,
        description="Seconds to wait for a matching event (default 7 days, at most 366 days).",
    )
    on_timeout: Literal["fail", "continue"] = Field(
        "fail",
        description="`fail`: the step fails `wait_timed_out`; `continue`: it succeeds with "
        '`{"timed_out": true}`.',
    )


#: The step kinds, each chosen by the one field of its name (``action`` for executor steps).
StepKind = Literal["action", "wait", "wait_for", "approval", "workflow"]
#: The fields that choose a step's kind; a step has exactly one of them.
KIND_FIELDS: tuple[StepKind, ...] = ("action", "wait", "wait_for", "approval", "workflow")
STEP_KIND_FIELDS = STEP_KINDS = KIND_FIELDS
#: Fields only an action step may set (the router runs the other kinds itself; a `workflow` step
#: keeps `retry`, which its `retry_failed` uses).
ACTION_ONLY_FIELDS = ("inputs", "timeout", "retry")


class Step(BaseModel):
    """One node of the DAG: its kind (an action with templated inputs, a wait, an approval), its
    dependencies and its policies."""

    model_config = _CONFIG

    id: StepId = Field(description="Unique step id; other steps refer to it in `needs` and `steps.<id>`.")
    action: Annotated[str, StringConstraints(pattern=ACTION_PATTERN)] | None = Field(
        None, description="Action an executor runs, e.g. `echo` or `firm.update_record`."
    )
    wait_for: WaitFor | None = Field(
        None, description="Wait for one of the tenant's events instead of running an action."
    )
    workflow: SubWorkflow | None = Field(
        None, description="Run another workflow of the tenant as a child run and wait for its outcome."
    )
    wait: WaitSpec | None = Field(None, description="Pause the run (durably, in the router).")
    approval: ApprovalSpec | None = Field(None, description="Wait for an operator's decision.")
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Action inputs. Strings may contain templates: a whole value `${{ expr }}` keeps the "
        "native type of the CEL result; `text ${{ expr }} text` interpolates; `$${{` is a literal `${{`; "
        "`${{ secrets.NAME }}` is a tenant secret, resolved by the executor only (never stored).",
    )
    needs: list[StepId] = Field(
        default_factory=list, description="Ids of the steps that must finish before this one starts."
    )
    when: Expression | None = Field(
        None, description="CEL condition; when false the step (and whatever only it leads to) is skipped."
    )
    timeout: float = Field(
        30.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds one attempt may run (at most one day)."
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in CEL_RESERVED_WORDS:
            raise ValueError(f"step id {value!r} is a reserved word of the expression language; rename it")
        return value

    @field_validator("inputs")
    @classmethod
    def _json_numbers(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _check_json_numbers(value)
        return value

    @model_validator(mode="after")
    def _exactly_one_kind(self) -> Step:
        chosen = [name for name in KIND_FIELDS if getattr(self, name) is not None]
        if len(chosen) != 1:
            found = f"it has {' and '.join(chosen)}" if chosen else "it has none"
            raise ValueError(f"a step needs exactly one of {', '.join(KIND_FIELDS)}; {found}")
        if self.workflow is not None and self.inputs:
            raise ValueError("a workflow step's inputs go under `workflow.inputs` (the child's trigger data)")
        if self.workflow is not None and "timeout" in self.model_fields_set:
            raise ValueError("a workflow step's timeout goes under `workflow.timeout` (default one day)")
        if chosen[0] not in ("action", "workflow"):
            extra = [name for name in ACTION_ONLY_FIELDS if name in self.model_fields_set]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)} {'apply' if len(extra) > 1 else 'applies'} to action steps"
                    f" only; a {chosen[0]} step sets its time limits in `{chosen[0]}:`"
                )
        return self

    @model_serializer(mode="wrap")
    def _dump_its_kind_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A step's JSON (what is signed, as RFC 8785 of the dump) holds its one kind field and
        # leaves out the others, so a definition written before the kinds existed signs the same
        # bytes as then; a router-run step leaves out the action-only fields it cannot have.
        data: dict[str, Any] = handler(self)
        for kind in KIND_FIELDS:
            if data.get(kind, "") is None:
                del data[kind]
        if self.action is None:
            for field in ACTION_ONLY_FIELDS:
                if not (field == "retry" and self.workflow is not None):
                    data.pop(field, None)
        return data

    @property
    def kind(self) -> StepKind:
        """Which kind of step this is: the one of :data:`KIND_FIELDS` it has."""
        for name in KIND_FIELDS:
            if getattr(self, name) is not None:
                return name
        raise AssertionError("a validated step has a kind")  # pragma: no cover


class ContextEntry(BaseModel):
    """One ``context:`` entry: a read action evaluated once at run start, before any step."""

    model_config = _CONFIG

    action: Annotated[str, StringConstraints(pattern=ACTION_PATTERN)] = Field(
        description="A read action (one that declares it does not mutate), e.g. `firm.get_record`."
    )
    inputs: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Action inputs; templates may read `trigger` only (the context is read before any step).",
    )
    timeout: float = Field(
        30.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds one attempt of the read may run."
    )

    @field_validator("inputs")
    @classmethod
    def _json_numbers(cls, value: dict[str, JsonValue]) -> dict[str, JsonValue]:
        _check_json_numbers(value)
        return value


ContextName = Annotated[str, StringConstraints(pattern=CONTEXT_NAME_PATTERN)]


class WorkflowDefinition(BaseModel):
    """A versioned, declarative DAG workflow. ``(tenant, name, version)`` identifies it; versions are
    immutable once published."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        title="Switchyard workflow definition",
        json_schema_extra={"$id": "https://switchyard.dev/schemas/workflow-definition.schema.json"},
    )

    name: Annotated[str, StringConstraints(pattern=WORKFLOW_NAME_PATTERN)] = Field(
        description="Workflow name, unique per tenant."
    )
    version: int = Field(
        ge=1, le=2**31 - 1, description="Positive version; a published version never changes."
    )
    description: Annotated[str, StringConstraints(max_length=4000)] = ""
    trigger: Trigger
    steps: list[Step] = Field(
        min_length=1, description="The steps of the DAG (at most 200).", json_schema_extra={"maxItems": 200}
    )
    concurrency: int | None = Field(
        None, ge=1, le=100_000, description="Maximum concurrent runs of this workflow per tenant."
    )
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    scopes: list[Scope] = Field(
        default_factory=list, description="Permission scopes the workflow needs, e.g. `firm_data:write`."
    )
    context: dict[ContextName, ContextEntry] = Field(
        default_factory=dict,
        description="Firm context read once at run start, before any step: name -> read action. "
        "Expressions see each result as `context.<name>`; replays keep it.",
        json_schema_extra={"maxProperties": MAX_CONTEXT_ENTRIES},
    )

    @model_serializer(mode="wrap")
    def _omit_empty_context(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A definition is signed over its dump (services.workflow.signing): one without a
        # context must dump exactly as before the field existed, or every definition published
        # earlier would fail its content hash and signature after an upgrade.
        data: dict[str, Any] = handler(self)
        if not self.context:
            data.pop("context", None)
        return data

    def step(self, step_id: str) -> Step:
        """The step with id ``step_id``, or the hidden step of a ``context:`` entry
        (``context.<name>``); ``KeyError`` when absent."""
        for step in self.steps:
            if step.id == step_id:
                return step
        if step_id.startswith(CONTEXT_STEP_PREFIX):
            entry = self.context.get(step_id[len(CONTEXT_STEP_PREFIX) :])
            if entry is not None:
                return context_step(step_id, entry)
        raise KeyError(step_id)

    def context_steps(self) -> list[Step]:
        """The hidden steps that read the ``context:`` entries, in declaration order."""
        return [context_step(CONTEXT_STEP_PREFIX + name, entry) for name, entry in self.context.items()]


def context_step(step_id: str, entry: ContextEntry) -> Step:
    """The hidden step reading one ``context:`` entry: a root with the default retry policy. Built
    without validation, since its id (``context.<name>``) is deliberately not a valid step id."""
    return Step.model_construct(
        id=step_id,
        action=entry.action,
        inputs=entry.inputs,
        needs=[],
        when=None,
        timeout=entry.timeout,
        retry=RetryPolicy(),
    )


def is_context_step(step_id: str) -> bool:
    """Whether ``step_id`` is the hidden step of a ``context:`` entry."""
    return step_id.startswith(CONTEXT_STEP_PREFIX)


def to_json_value(model: BaseModel) -> JsonObject:
    """The JSON form of a model (as signed and published)."""
    return model.model_dump(mode="json")
