"""What each event type changes in runs, steps and attempts (pure planning, no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.projector.changes import attempt_change, run_skeleton, run_started_at, run_update, step_change
from services.projector.events import Coordinates, ProjectedEvent
from tests.unit.projector.row_values import attempt_values, step_values

AT = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def ev(
    type_: str,
    *,
    state: str | None = None,
    step_id: str | None = None,
    attempt: int | None = None,
    detail: dict[str, Any] | None = None,
    seq: int = 5,
) -> ProjectedEvent:
    return ProjectedEvent(
        event_id=f"e{seq}",
        run_id="r",
        tenant="acme",
        workflow="orders",
        version=1,
        seq=seq,
        type=type_,
        step_id=step_id,
        attempt=attempt,
        state=state,
        at=AT,
        correlation_id="c",
        detail=detail or {},
        raw_detail=detail,
        where=Coordinates("wf.events", 0, seq),
    )


def test_run_pending_records_the_trigger() -> None:
    trigger = {"event_type": "order.created", "data": {"n": 1}, "idempotency_key": "k"}
    values = run_update(ev("run_pending", state="pending", seq=1, detail={"trigger": trigger}))
    assert values["state"] == "pending" and values["created_at"] == AT and values["last_seq"] == 1
    assert (values["event_type"], values["trigger_data"], values["idempotency_key"]) == (
        "order.created",
        {"n": 1},
        "k",
    )


def test_a_child_runs_pending_event_records_its_parent() -> None:
    parent = {"run_id": "p1", "step_id": "call", "attempt": 1, "partition": 0, "depth": 1}
    values = run_update(ev("run_pending", state="pending", seq=1, detail={"trigger": {}, "parent": parent}))
    assert values["parent_run_id"] == "p1"
    assert "parent_run_id" not in run_update(
        ev("run_pending", state="pending", seq=1, detail={"trigger": {}})
    )


def test_terminal_run_states_finish_the_run() -> None:
    for type_, state in (("run_succeeded", "succeeded"), ("run_cancelled", "cancelled")):
        values = run_update(ev(type_, state=state))
        assert values["state"] == state and values["finished_at"] == AT


def test_run_failed_records_the_error() -> None:
    detail = {"step_id": "s", "error_kind": "http_500", "error_message": "boom"}
    values = run_update(ev("run_failed", state="failed", detail=detail))
    assert (values["state"], values["error_kind"], values["error_message"]) == ("failed", "http_500", "boom")


def test_back_to_running_clears_finish_and_error() -> None:
    values = run_update(ev("run_running", state="running"))
    assert values["state"] == "running"
    assert values["finished_at"] is None and values["error_kind"] is None
    assert run_started_at(ev("run_started", state="running"))
    assert not run_started_at(ev("run_retrying", state="retrying"))


def test_any_run_event_with_a_state_sets_it_and_others_only_bump_seq() -> None:
    assert run_update(ev("run_paused", state="paused"))["state"] == "paused"
    assert run_update(ev("run_replayed")) == {"last_seq": 5, "updated_at": AT}
    assert run_update(ev("step_scheduled", state="running", step_id="s", attempt=1)) == {
        "last_seq": 5,
        "updated_at": AT,
    }
    assert run_update(ev("result_ignored", step_id="s")) == {"last_seq": 5, "updated_at": AT}


def test_skeleton_starts_below_the_first_event() -> None:
    assert run_skeleton(ev("run_pending", state="pending", seq=1))["last_seq"] == 0
    assert run_skeleton(ev("run_pending", state="pending"))["state"] == "pending"
    assert run_skeleton(ev("step_succeeded", step_id="s", attempt=1))["state"] == "running"


def test_step_scheduled_upserts_step_and_attempt() -> None:
    detail = {"action": "http", "inputs": {"a": 1}, "idempotency_key": "r:s:2", "deadline": 9}
    e = ev("step_scheduled", state="running", step_id="s", attempt=2, detail=detail)
    step = step_change(e)
    assert step is not None
    assert step.key == {"run_id": "r", "step_id": "s"}
    assert (step.values["state"], step_values(step)["attempts"], step.values["started_at"]) == (
        "running",
        2,
        AT,
    )
    assert step.merge["attempts"] == "greatest" and step.merge["started_at"] == "coalesce"
    attempt = attempt_change(e)
    assert attempt is not None and attempt.key == {"run_id": "r", "step_id": "s", "attempt": 2}
    assert (
        attempt_values(attempt)["inputs"] == {"a": 1}
        and attempt_values(attempt)["idempotency_key"] == "r:s:2"
    )
    assert attempt_values(attempt)["scheduled_at"] == AT


def test_step_succeeded_takes_executor_timings() -> None:
    detail = {
        "output": [1],
        "started_at": 1_735_732_799_000,
        "finished_at": 1_735_732_799_500,
        "executor_id": "x",
    }
    e = ev("step_succeeded", state="succeeded", step_id="s", attempt=1, detail=detail)
    step, attempt = step_change(e), attempt_change(e)
    assert step is not None and attempt is not None
    assert step.values["output"] == [1] and step.values["error_kind"] is None
    assert attempt.values["started_at"] == datetime(2025, 1, 1, 11, 59, 59, tzinfo=UTC)
    assert attempt.values["finished_at"] == datetime(2025, 1, 1, 11, 59, 59, 500000, tzinfo=UTC)
    assert attempt_values(attempt)["executor_id"] == "x" and attempt.values["state"] == "succeeded"


def test_step_retrying_fails_the_attempt_but_not_the_step() -> None:
    detail = {"error_kind": "http_503", "error_message": "busy", "retry_at": 1, "next_attempt": 2}
    e = ev("step_retrying", state="retrying", step_id="s", attempt=1, detail=detail)
    step, attempt = step_change(e), attempt_change(e)
    assert step is not None and attempt is not None
    assert (step.values["state"], step.values["finished_at"], step.values["error_kind"]) == (
        "retrying",
        None,
        "http_503",
    )
    assert (attempt.values["state"], attempt.values["error_message"]) == ("failed", "busy")


def test_step_timed_out() -> None:
    final = ev("step_timed_out", state="failed", step_id="s", attempt=3, detail={"deadline": 7})
    step, attempt = step_change(final), attempt_change(final)
    assert step is not None and attempt is not None
    assert (step.values["state"], step.values["error_kind"], step.values["finished_at"]) == (
        "failed",
        "timeout",
        AT,
    )
    assert step.values["error_message"] == "attempt 3 exceeded its deadline (7)"
    assert attempt.values["state"] == "timed_out"
    again = step_change(ev("step_timed_out", state="retrying", step_id="s", attempt=1))
    assert again is not None and again.values["finished_at"] is None


def test_step_skipped_has_no_attempt_and_cancelled_cancels_it() -> None:
    skipped = ev("step_skipped", state="skipped", step_id="s", detail={"reason": "when false"})
    step = step_change(skipped)
    assert step is not None and step.values["state"] == "skipped" and step_values(step)["attempts"] == 0
    assert attempt_change(skipped) is None
    cancelled = ev("step_cancelled", state="cancelled", step_id="s", attempt=1)
    attempt = attempt_change(cancelled)
    assert attempt is not None and attempt.values["state"] == "cancelled"


def test_history_only_types_change_no_step() -> None:
    for type_ in ("result_ignored", "control_accepted", "control_refused", "run_replayed", "step_mystery"):
        e = ev(type_, step_id="s", attempt=1)
        assert step_change(e) is None
        assert attempt_change(e) is None
    unknown_with_state = step_change(ev("step_paused", state="paused", step_id="s"))
    assert unknown_with_state is not None and unknown_with_state.values["state"] == "paused"
