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
#: Upper bound of anything a step waits for (a duration, an event, an approval): 366 days.
MAX_WAIT_SECONDS = 366 * 24 * 60 * 60.0
#: Default of ``wait_for.timeout``: seven days.
DEFAULT_WAIT_FOR_SECONDS = 7 * 24 * 60 * 60.0

STEP_ID_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
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


StepKind = Literal["action", "wait", "wait_for", "approval", "workflow"]
#: The fields that choose a step's kind; a step has exactly one.
STEP_KINDS: tuple[StepKind, ...] = ("action", "wait", "wait_for", "approval", "workflow")


class Step(BaseModel):
    """One node of the DAG: an action with templated inputs, its dependencies and its policies."""

    model_config = _CONFIG

    id: StepId = Field(description="Unique step id; other steps refer to it in `needs` and `steps.<id>`.")
    action: Annotated[str, StringConstraints(pattern=ACTION_PATTERN)] | None = Field(
        None, description="Action to run, e.g. `echo` or `firm.update_record`."
    )
    wait_for: WaitFor | None = Field(
        None, description="Wait for one of the tenant's events instead of running an action."
    )
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

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        chosen = [name for name in STEP_KINDS if getattr(self, name, None) is not None]
        if len(chosen) != 1:
            raise ValueError("a step has exactly one of action, wait, wait_for, approval, workflow")
        return self

    @model_validator(mode="after")
    def _wait_for_alone(self) -> Step:
        # By value, not by fields set: a definition read back from its signed JSON has them all.
        if self.wait_for is not None:
            extra = [
                name
                for name, default in (("inputs", {}), ("timeout", 30.0), ("retry", RetryPolicy()))
                if getattr(self, name) != default
            ]
            if extra:
                raise ValueError(
                    f"a wait_for step takes no {', '.join(extra)} (they belong to action steps); "
                    "its time limit is wait_for.timeout"
                )
        return self

    @model_serializer(mode="wrap")
    def _without_other_kinds(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """The kind fields a step does not have are left out, not written ``null``: a definition
        signed before they existed keeps its canonical JSON, hence its content hash and signature."""
        data: dict[str, Any] = handler(self)
        for name in STEP_KINDS:
            if name in data and data[name] is None:
                del data[name]
        return data

    @property
    def kind(self) -> StepKind:
        """Which kind of step this is: the one field of :data:`STEP_KINDS` it has."""
        return next(name for name in STEP_KINDS if getattr(self, name, None) is not None)

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

    name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,99}$")] = Field(
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

    def step(self, step_id: str) -> Step:
        """The step with id ``step_id`` (``KeyError`` when absent)."""
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)


def to_json_value(model: BaseModel) -> JsonObject:
    """The JSON form of a model (as signed and published)."""
    return model.model_dump(mode="json")
