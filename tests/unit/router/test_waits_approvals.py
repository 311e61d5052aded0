"""Wait and approval steps in the pure run state machine: the router runs them itself (no command,
no executor slot), parks them on the run's durable deadline timer, and ends them on its wake-up,
on an operator's decision or on their timeout."""

from __future__ import annotations

from typing import Any

import pytest

from services.config import Settings
from services.contracts.records import ControlCommand
from services.contracts.vocabulary import ALWAYS_NON_RETRYABLE, ErrorKind
from services.control.signing import sign, signature_matches, signing_payload
from services.router import control, machine, run_store, waits
from services.router.event_details import StepScheduledDetail
from services.router.state import RunState, RunStatus
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_text

from .test_event_details import DETAIL_OF

T0 = 1_800_000_000_000  # 2027-01-15T08:00:00Z
SETTINGS = Settings()


def workflow(steps: str) -> CompiledWorkflow:
    text = f"name: wf\nversion: 1\ntrigger: {{event: go}}\nsteps:\n{steps}"
    return compile_workflow(load_definition_text(text, filename="wf.yaml"))


WAITS = workflow(
    """
  - {id: pause, wait: {duration: 2}}
  - {id: until, wait: {until: "trigger.data.at"}, needs: [pause]}
  - {id: after, action: echo, needs: [until]}
"""
)


def approval_wf(**spec: str) -> CompiledWorkflow:
    extra = "".join(f", {k}: {v}" for k, v in spec.items())
    return workflow(
        f"""
  - {{id: ask, approval: {{prompt: "Send the invoice?", timeout: 60{extra}}}}}
  - {{id: send, action: echo, needs: [ask]}}
  - {{id: other, action: echo}}
"""
    )


def new_run(wf: CompiledWorkflow, data: dict[str, Any] | None = None) -> RunState:
    return RunState(
        run_id="r1",
        tenant="t",
        workflow="wf",
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key="k",
        trigger={"event": "go", "data": data or {}},
        arrival=1,
        created_ms=0,
        steps=machine.new_run_steps(wf),
    )


def decision(
    step: str | None, verdict: str | None, command_id: str = "cmd-1", comment: str = "ok"
) -> ControlCommand:
    return {
        "command_id": command_id,
        "kind": "approve",
        "requester": "alice-key",
        "tenant": "t",
        "run_id": "r1",
        "step_id": step,
        "reason": f"{verdict}: {comment}",
        "correlation_id": "cc",
        "issued_at": T0,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
        "decision": verdict,
        "comment": comment,
    }


def types(effects: machine.Effects) -> list[tuple[str, str | None]]:
    return [(e.type.value, e.step_id) for e in effects.events]


def status(run: RunState) -> RunStatus:
    return run.status


def check_details(effects: machine.Effects) -> None:
    """Every event has the keys event_details declares for its type."""
    for event in effects.events:
        declared = DETAIL_OF[event.type]
        if declared is None or event.detail is None:
            continue
        keys = set(event.detail)
        assert declared.__required_keys__ <= keys <= declared.__required_keys__ | declared.__optional_keys__


# --- wait ---------------------------------------------------------------------------------------------


def test_a_duration_wait_parks_on_a_deadline_timer_and_succeeds_when_it_fires() -> None:
    run = new_run(WAITS, {"at": "2020-01-01T00:00:00Z"})
    fx = machine.start(run, WAITS, T0)
    check_details(fx)
    assert fx.commands == []  # no executor command, no slot
    assert fx.timers == [machine.Timer(T0 + 2000, "r1", "pause", 1, "deadline")]
    assert run.steps["pause"].status == "running" and run.steps["pause"].deadline_ms == T0 + 2000
    scheduled: Any = fx.events[-1].detail
    assert scheduled["action"] is None and scheduled["kind"] == "wait"
    assert scheduled["waiting"] == {"until": "2027-01-15T08:00:02.000Z"}
    # the restore path rebuilds exactly this timer from the state
    assert run_store.step_timers(run) == fx.timers

    fired = machine.on_timer(run, WAITS, fx.timers[0], T0 + 2005, 0.5)
    check_details(fired)
    # pause wakes; `until` is already past, so it ends at once; the action after it is commanded
    assert types(fired)[:4] == [
        ("step_succeeded", "pause"),
        ("step_scheduled", "until"),
        ("step_succeeded", "until"),
        ("step_scheduled", "after"),
    ]
    assert run.steps["pause"].output == {"waited_until": "2027-01-15T08:00:02.000Z"}
    assert run.steps["until"].output == {"waited_until": "2020-01-01T00:00:00.000Z"}
    assert [c.step_id for c in fired.commands] == ["after"]
    # the same timer again (e.g. restored twice) does nothing
    assert not machine.timer_is_live(run, fx.timers[0])
    assert machine.on_timer(run, WAITS, fx.timers[0], T0 + 3000, 0.5).events == []


@pytest.mark.parametrize(
    ("at", "due"),
    [
        ("2027-01-15T09:00:00Z", T0 + 3600_000),
        ("2027-01-15T10:00:00+01:00", T0 + 3600_000),
        ("timestamp('2027-01-15T08:00:10Z')", T0 + 10_000),
    ],
)
def test_until_takes_an_rfc3339_string_or_a_cel_timestamp(at: str, due: int) -> None:
    wf = workflow(
        f"""
  - {{id: w, wait: {{until: "{at}" }}}}
"""
        if at.startswith("timestamp")
        else """
  - {id: w, wait: {until: "trigger.data.at"}}
"""
    )
    run = new_run(wf, {"at": at})
    fx = machine.start(run, wf, T0)
    assert fx.timers == [machine.Timer(due, "r1", "w", 1, "deadline")]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (42, "gave int, not an RFC 3339 timestamp"),
        ("tomorrow", "gave 'tomorrow', not an RFC 3339 timestamp"),
        ("2027-01-15T09:00:00", "without a time zone"),
        ("2029-01-01T00:00:00Z", "more than 366 days ahead"),
    ],
)
def test_a_bad_until_fails_the_step_with_expression_error_and_a_dead_letter(value: object, why: str) -> None:
    wf = workflow('  - {id: w, wait: {until: "trigger.data.at"}}\n')
    run = new_run(wf, {"at": value})
    fx = machine.start(run, wf, T0)
    check_details(fx)
    assert status(run) == RunStatus.FAILED and fx.timers == []
    assert run.steps["w"].error_kind == ErrorKind.EXPRESSION_ERROR
    assert len(fx.dead_letters) == 1 and why in fx.dead_letters[0]["error_message"]


def test_a_missing_until_key_fails_the_step_too() -> None:
    wf = workflow('  - {id: w, wait: {until: "trigger.data.at"}}\n')
    run = new_run(wf, {})
    fx = machine.start(run, wf, T0)
    assert run.steps["w"].error_kind == ErrorKind.EXPRESSION_ERROR and "wait.until" in (
        run.steps["w"].error_message or ""
    )
    assert ("run_failed", None) in types(fx)


def test_instant_ms_reads_what_cel_timestamps_become() -> None:
    assert waits.instant_ms("2027-01-15T08:00:00Z") == T0
    assert waits.instant_ms("2027-01-15T08:00:00.250Z") == T0 + 250
    with pytest.raises(ValueError, match="characters"):
        waits.instant_ms("2" * 65)


def test_cancel_ends_a_waiting_run_and_its_timer_is_dead() -> None:
    run = new_run(WAITS, {"at": "2020-01-01T00:00:00Z"})
    timer = machine.start(run, WAITS, T0).timers[0]
    fx = machine.cancel(run, "ops", "enough")
    assert types(fx)[0] == ("step_cancelled", "pause") and types(fx)[-1] == ("run_cancelled", None)
    assert run.steps["pause"].deadline_ms is None and run_store.step_timers(run) == []
    assert not machine.timer_is_live(run, timer)
    assert machine.on_timer(run, WAITS, timer, T0 + 2000, 0.5).events == []


# --- approval -----------------------------------------------------------------------------------------


def started(wf: CompiledWorkflow) -> tuple[RunState, machine.Effects]:
    run = new_run(wf)
    fx = machine.start(run, wf, T0)
    return run, fx


def test_an_approval_parks_until_its_timeout_without_a_command() -> None:
    _, fx = started(approval_wf())
    check_details(fx)
    assert [c.step_id for c in fx.commands] == ["other"]  # only the action step is commanded
    assert fx.timers[0] == machine.Timer(T0 + 60_000, "r1", "ask", 1, "deadline")
    scheduled: StepScheduledDetail = fx.events[1].detail  # type: ignore[assignment]
    assert scheduled["kind"] == "approval" and scheduled.get("waiting") == {
        "prompt": "Send the invoice?",
        "timeout_at": "2027-01-15T08:01:00.000Z",
        "on_timeout": "fail",
    }


def test_approve_succeeds_the_step_with_who_and_why_and_moves_the_run_on() -> None:
    wf = approval_wf()
    run, _ = started(wf)
    fx = machine.decide(run, wf, decision("ask", "approve", comment="numbers checked"), T0 + 5000)
    check_details(fx)
    assert types(fx)[:3] == [
        ("control_accepted", None),
        ("step_succeeded", "ask"),
        ("step_scheduled", "send"),
    ]
    accepted: Any = fx.events[0].detail
    assert accepted["decision"] == "approve" and accepted["requester"] == "alice-key"
    assert run.steps["ask"].output == {
        "decision": "approve",
        "by": "alice-key",
        "comment": "numbers checked",
        "at": "2027-01-15T08:00:05.000Z",
    }
    assert [c.step_id for c in fx.commands] == ["send"]


def test_reject_fails_the_step_never_retried() -> None:
    wf = approval_wf()
    run, _ = started(wf)
    fx = machine.decide(run, wf, decision("ask", "reject", comment="wrong client"), T0 + 5000)
    check_details(fx)
    assert types(fx)[:2] == [("control_accepted", None), ("step_failed", "ask")]
    assert run.steps["ask"].error_kind == ErrorKind.APPROVAL_REJECTED and run.steps["ask"].attempt == 1
    assert "rejected by alice-key: wrong client" in (run.steps["ask"].error_message or "")
    assert status(run) == RunStatus.FAILED and fx.timers == []
    assert ErrorKind.APPROVAL_REJECTED in ALWAYS_NON_RETRYABLE
    assert fx.dead_letters[0]["error_kind"] == ErrorKind.APPROVAL_REJECTED


def test_reject_with_on_reject_continue_succeeds_with_the_decision() -> None:
    wf = approval_wf(on_reject="continue")
    run, _ = started(wf)
    machine.decide(run, wf, decision("ask", "reject"), T0 + 5000)
    assert run.steps["ask"].status == "succeeded" and run.steps["ask"].output["decision"] == "reject"
    assert run.steps["send"].status == "running"


def test_timeout_fails_with_approval_timed_out_or_continues() -> None:
    wf = approval_wf()
    run, fx = started(wf)
    timed_out = machine.on_timer(run, wf, fx.timers[0], T0 + 60_000, 0.5)
    check_details(timed_out)
    assert ("step_timed_out", "ask") in types(timed_out)
    assert run.steps["ask"].error_kind == ErrorKind.APPROVAL_TIMED_OUT and status(run) == RunStatus.FAILED
    assert timed_out.timers == []  # not retried

    wf = approval_wf(on_timeout="continue")
    run, fx = started(wf)
    machine.on_timer(run, wf, fx.timers[0], T0 + 60_000, 0.5)
    assert run.steps["ask"].output == {"decision": "timeout"} and run.steps["send"].status == "running"


@pytest.mark.parametrize(
    ("step", "verdict", "why"),
    [
        ("other", "approve", "step 'other' is a action step, not an approval"),
        ("send", "approve", "step 'send' is a action step, not an approval"),
        ("nope", "approve", "has no step 'nope'"),
        (None, "approve", "names the step it decides"),
        ("ask", "maybe", "decision must be one of approve, reject, not 'maybe'"),
        ("ask", None, "decision must be one of approve, reject, not None"),
    ],
)
def test_a_decision_that_decides_nothing_is_refused_with_the_reason(
    step: str | None, verdict: str | None, why: str
) -> None:
    wf = approval_wf()
    run, _ = started(wf)
    before = {k: v.copy() for k, v in run.steps.items()}
    fx = machine.decide(run, wf, decision(step, verdict), T0 + 1000)
    assert types(fx) == [("control_refused", None)]
    assert why in fx.events[0].detail["refusal"]  # type: ignore[index, typeddict-item]
    assert run.steps == before


def test_a_second_decision_or_one_for_a_finished_run_is_refused() -> None:
    wf = approval_wf()
    run, _ = started(wf)
    machine.decide(run, wf, decision("ask", "approve"), T0 + 1000)
    again = machine.decide(run, wf, decision("ask", "reject", "cmd-2"), T0 + 2000)
    assert "step 'ask' is not waiting for a decision (it is succeeded)" in again.events[0].detail["refusal"]  # type: ignore[index, typeddict-item]
    machine.cancel(run, "ops", "stop")
    late = machine.decide(run, wf, decision("ask", "approve", "cmd-3"), T0 + 3000)
    assert late.events[0].detail["refusal"] == "run is already cancelled"  # type: ignore[index, typeddict-item]


def test_plan_applies_a_decision_once_per_command_id() -> None:
    wf = approval_wf()
    run, _ = started(wf)
    first = control.plan(run, decision("ask", "approve"), T0 + 1000, SETTINGS, None, lambda _: wf)()
    assert types(first)[0] == ("control_accepted", None)
    replayed = control.plan(run, decision("ask", "approve"), T0 + 2000, SETTINGS, None, lambda _: wf)()
    assert types(replayed) == [("control_refused", None)]
    assert "duplicate_command" in replayed.events[0].detail["refusal"]  # type: ignore[index, typeddict-item]


def test_an_untrusted_definition_refuses_the_decision() -> None:
    wf = approval_wf()
    run, _ = started(wf)
    fx = control.plan(run, decision("ask", "approve"), T0 + 1000, SETTINGS, None, lambda _: None)()
    assert fx.events[0].detail["refusal"] == "the run's definition is no longer verified"  # type: ignore[index, typeddict-item]


def test_the_decision_and_comment_are_signed_and_older_commands_sign_as_before() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    signed = sign(decision("ask", "approve"), "alice-key", key)
    assert signature_matches(signed, key.public_key())
    flipped: ControlCommand = {**signed, "decision": "reject"}
    assert not signature_matches(flipped, key.public_key())
    edited: ControlCommand = {**signed, "comment": "something else"}
    assert not signature_matches(edited, key.public_key())
    # a cancel without the late fields signs the same bytes as before they existed
    cancel: ControlCommand = {**decision(None, None), "kind": "cancel"}
    del cancel["decision"], cancel["comment"]
    assert b"decision" not in signing_payload(cancel) and b"comment" not in signing_payload(cancel)
    assert signing_payload(cancel) == signing_payload({**cancel, "decision": None, "comment": None})


def test_a_replay_of_a_rejected_run_asks_again() -> None:
    wf = approval_wf()
    run, _ = started(wf)
    machine.decide(run, wf, decision("ask", "reject"), T0 + 1000)
    assert status(run) == RunStatus.FAILED
    steps = machine.steps_to_replay(run, wf, "replay_run", None)
    assert steps == ["ask", "other"]  # the rejected approval, and the action the failure cancelled
    machine.replay(run, steps, {**decision(None, None, "cmd-2"), "kind": "replay_run"})
    fx = machine.start(run, wf, T0 + 2000)
    assert machine.Timer(T0 + 62_000, "r1", "ask", 2, "deadline") in fx.timers
    machine.decide(run, wf, decision("ask", "approve", "cmd-3"), T0 + 3000)
    assert run.steps["ask"].output["decision"] == "approve" and run.steps["send"].status == "running"
