"""The ``detail`` of each history event the run state machine writes, as types.

An event's detail is written as ``RunEvent.detail_json`` and read back by the projector and the
console, so its field names are a contract like the record's own. Each event type has its shape
here (plain dicts at run time); :data:`EventDetail` is any of them. Values that are the tenant's
(trigger data, step inputs and outputs) stay ``Any``.
"""

# No ``from __future__ import annotations``: ``NotRequired`` must be seen at run time, so that
# ``__required_keys__`` (which tests hold the machine's events to) is right.
from typing import Any, NotRequired, TypeAlias, TypedDict

from services.contracts.records import JsonObject, RunParent


class TriggerSummary(TypedDict):
    """The trigger a run started from, as its ``run_pending`` event shows it."""

    event_type: str | None
    data: Any  # None in the lean form
    idempotency_key: str


class RunPendingDetail(TypedDict):
    trigger: TriggerSummary
    source: str
    trigger_omitted: NotRequired[str]  # why the lean form left the trigger's data out
    parent: NotRequired[RunParent]  # a sub-workflow's child run: the step attempt awaiting it


class AttemptTiming(TypedDict):
    """When and where an attempt ran, as its executor reported it."""

    started_at: int | None
    finished_at: int | None
    executor_id: str | None


class StepSucceededDetail(TypedDict):
    output: Any
    started_at: int | None
    finished_at: int | None
    executor_id: str | None


class StepFailureDetail(TypedDict):
    """``step_failed`` / ``step_retrying`` / ``step_timed_out``: why, and what happens next."""

    error_kind: str
    error_message: str
    started_at: NotRequired[int | None]
    finished_at: NotRequired[int | None]
    executor_id: NotRequired[str | None]
    retry_at: NotRequired[int]
    next_attempt: NotRequired[int]
    retries_exhausted: NotRequired[bool]


class StepScheduledDetail(TypedDict):
    """An attempt sent to the executors, or a step the router runs itself (``action`` None): its
    ``kind`` (``wait``, ``approval``, …), ``deadline`` its wake-up or timeout, ``waiting`` what
    it waits for."""

    action: str | None
    inputs: JsonObject
    deadline: int
    idempotency_key: str
    kind: NotRequired[str]
    waiting: NotRequired[JsonObject]


class ChildScheduledDetail(TypedDict):
    """``step_scheduled`` of a ``workflow:`` step: the child run it started (and is waiting for)."""

    workflow: str
    version: int | None  # None: the latest trusted version (the child run records which)
    child_run_id: str
    inputs: JsonObject
    deadline: int
    idempotency_key: str


class ReasonDetail(TypedDict):
    """``result_ignored``, ``step_skipped``, ``step_cancelled``: one reason."""

    reason: str


class RunCancelledDetail(TypedDict):
    requester: str
    reason: str


class RunFailedDetail(TypedDict):
    step_id: str | None
    error_kind: str | None
    error_message: str | None


class ControlDetail(TypedDict):
    """``control_accepted`` / ``control_refused``: an operator's command and its decision."""

    command_id: str
    kind: str
    requester: str
    reason: str
    step_id: str | None
    command_correlation_id: str | None
    refusal: NotRequired[str]
    decision: NotRequired[str | None]  # an approval decision's (kind ``approve``)


class StepResetDetail(TypedDict):
    command_id: str


class RunReplayedDetail(TypedDict):
    command_id: str
    requester: str
    reason: str
    replay: int
    steps: list[str]


class StepWaitingForEventDetail(TypedDict):
    """A ``wait_for`` step started waiting: for which event type, under which condition, until when."""

    event: str
    match: str | None
    deadline: int  # epoch ms: past it, on_timeout applies


EventDetail: TypeAlias = (
    RunPendingDetail
    | StepSucceededDetail
    | StepFailureDetail
    | StepScheduledDetail
    | ChildScheduledDetail
    | ReasonDetail
    | RunCancelledDetail
    | RunFailedDetail
    | ControlDetail
    | StepResetDetail
    | RunReplayedDetail
    | StepWaitingForEventDetail
)
