"""Run progress: ``CompiledWorkflow.advance`` decisions, unit cases and random-DAG properties."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.workflow import EXPRESSION_ERROR, EvalContext, ExpressionError, StepStatus

from .helpers import compiled

S = StepStatus
CTX = EvalContext({"event": "demo", "data": {"go": True, "amount": 5}})


def test_roots_start_first() -> None:
    wf = compiled([{"id": "a", "action": "noop"}, {"id": "b", "action": "noop", "needs": ["a"]}])
    adv = wf.advance({}, CTX)
    assert (adv.start, adv.skip, adv.outcome) == (("a",), (), None)
    assert wf.advance({"a": S.RUNNING}, CTX).start == ()
    assert wf.advance({"a": S.SUCCEEDED}, CTX).start == ("b",)
    assert wf.advance({"a": S.SUCCEEDED, "b": S.SUCCEEDED}, CTX).outcome == "succeeded"


def test_fan_in_waits_for_every_need() -> None:
    wf = compiled(
        [
            {"id": "a", "action": "noop"},
            {"id": "b", "action": "noop"},
            {"id": "c", "action": "noop", "needs": ["a", "b"]},
        ]
    )
    assert wf.advance({}, CTX).start == ("a", "b")
    assert wf.advance({"a": S.SUCCEEDED, "b": S.RETRYING}, CTX).start == ()
    assert wf.advance({"a": S.SUCCEEDED, "b": S.SUCCEEDED}, CTX).start == ("c",)


def test_false_when_skips_and_skips_propagate_to_a_fixed_point() -> None:
    wf = compiled(
        [
            {"id": "a", "action": "noop"},
            {"id": "b", "action": "noop", "needs": ["a"], "when": "trigger.data.amount > 10"},
            {"id": "c", "action": "noop", "needs": ["b"]},
            {"id": "d", "action": "noop", "needs": ["c"]},
        ]
    )
    adv = wf.advance({"a": S.SUCCEEDED}, CTX)
    assert adv.skip == ("b", "c", "d")
    assert adv.start == ()
    assert adv.outcome == "succeeded"


def test_join_after_branch_runs_when_one_branch_succeeded() -> None:
    wf = compiled(
        [
            {"id": "a", "action": "noop"},
            {"id": "yes", "action": "noop", "needs": ["a"], "when": "trigger.data.go"},
            {"id": "no", "action": "noop", "needs": ["a"], "when": "!trigger.data.go"},
            {"id": "join", "action": "noop", "needs": ["yes", "no"]},
        ]
    )
    adv = wf.advance({"a": S.SUCCEEDED}, CTX)
    assert (adv.start, adv.skip) == (("yes",), ("no",))
    adv = wf.advance({"a": S.SUCCEEDED, "yes": S.SUCCEEDED, "no": S.SKIPPED}, CTX)
    assert adv.start == ("join",)


def test_failure_ends_the_run_and_starts_nothing() -> None:
    wf = compiled([{"id": "a", "action": "noop"}, {"id": "b", "action": "noop"}])
    adv = wf.advance({"a": S.FAILED}, CTX)
    assert (adv.start, adv.skip, adv.outcome) == ((), (), "failed")
    assert wf.advance({"a": S.CANCELLED}, CTX).outcome == "cancelled"


def test_unevaluable_when_fails_the_step_with_expression_error() -> None:
    wf = compiled([{"id": "a", "action": "noop", "when": "trigger.data.missing == 1"}])
    adv = wf.advance({}, CTX)
    assert adv.outcome == "failed"
    (failure,) = adv.fail
    assert (failure.step_id, failure.error_kind) == ("a", EXPRESSION_ERROR)
    assert "no such key" in failure.message


def test_unknown_status_ids_are_refused() -> None:
    wf = compiled([{"id": "a", "action": "noop"}])
    with pytest.raises(KeyError):
        wf.advance({"zzz": S.SUCCEEDED}, CTX)


def test_matches_event_type_and_filter() -> None:
    wf = compiled(
        [{"id": "a", "action": "noop"}], trigger={"event": "demo", "filter": "trigger.data.amount > 3"}
    )
    assert wf.matches({"event": "demo", "data": {"amount": 5}})
    assert not wf.matches({"event": "demo", "data": {"amount": 1}})
    assert not wf.matches({"event": "other", "data": {"amount": 5}})
    with pytest.raises(ExpressionError):
        wf.matches({"event": "demo", "data": {}})


def test_render_inputs_and_evaluate_when() -> None:
    wf = compiled(
        [
            {"id": "a", "action": "echo", "inputs": {"n": "${{ trigger.data.amount + 1 }}"}},
            {"id": "b", "action": "echo", "needs": ["a"], "when": "steps.a.output.n == 6",
             "inputs": {"msg": "got ${{ steps.a.output.n }}"}},
        ]
    )  # fmt: skip
    assert wf.render_inputs("a", CTX) == {"n": 6}
    ctx = EvalContext(CTX.trigger, {"a": {"n": 6}})
    assert wf.evaluate_when("a", ctx) is True
    assert wf.evaluate_when("b", ctx) is True
    assert wf.render_inputs("b", ctx) == {"msg": "got 6"}
    with pytest.raises(ExpressionError):
        wf.render_inputs("b", CTX)


# --- properties over random DAGs ------------------------------------------------------------------


@st.composite
def random_workflow(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, bool]]:
    n = draw(st.integers(1, 14))
    steps: list[dict[str, Any]] = []
    flags: dict[str, bool] = {}
    for i in range(n):
        needs = sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 3)))) if i else []
        step: dict[str, Any] = {"id": f"s{i}", "action": "noop", "needs": [f"s{j}" for j in needs]}
        if draw(st.booleans()):
            step["when"] = f"trigger.data.flags.s{i}"
            flags[f"s{i}"] = draw(st.booleans())
        steps.append(step)
    order = draw(st.permutations(steps))  # declaration order need not be topological
    return list(order), flags


@settings(max_examples=150, deadline=None)
@given(spec=random_workflow(), seed=st.integers(0, 2**32 - 1), fail_rate=st.sampled_from([0.0, 0.1, 0.4]))
def test_advance_respects_needs_and_terminates(
    spec: tuple[list[dict[str, Any]], dict[str, bool]], seed: int, fail_rate: float
) -> None:
    steps, flags = spec
    wf = compiled(steps)
    rng = random.Random(seed)
    ctx = EvalContext({"event": "demo", "data": {"flags": flags}})
    statuses: dict[str, StepStatus] = {}
    running: list[str] = []
    started: list[str] = []
    outcome = None
    for _ in range(4 * len(steps) + 4):
        adv = wf.advance(statuses, ctx)
        # a second call with the skips applied finds nothing more to skip: a fixed point
        for sid in adv.skip:
            statuses[sid] = StepStatus.SKIPPED
        assert wf.advance(statuses, ctx).skip == ()
        for sid in adv.start:
            assert sid not in started, "a step started twice"
            assert all(statuses.get(p) in (S.SUCCEEDED, S.SKIPPED) for p in wf.parents(sid))
            assert wf.parents(sid) == () or any(statuses.get(p) is S.SUCCEEDED for p in wf.parents(sid))
            assert flags.get(sid, True)
            statuses[sid] = StepStatus.RUNNING
            running.append(sid)
            started.append(sid)
        for sid in adv.skip:
            assert sid not in started
        if adv.outcome is not None:
            outcome = adv.outcome
            break
        assert running, "no progress possible but no outcome: deadlock"
        sid = running.pop(rng.randrange(len(running)))
        statuses[sid] = S.FAILED if rng.random() < fail_rate else S.SUCCEEDED
    assert outcome is not None
    if outcome == "succeeded":
        assert all(statuses.get(s["id"]) in (S.SUCCEEDED, S.SKIPPED) for s in steps)
        assert S.FAILED not in statuses.values()
    else:
        assert outcome == "failed"
        assert S.FAILED in statuses.values()


@settings(max_examples=100, deadline=None)
@given(spec=random_workflow())
def test_topological_order_is_valid(spec: tuple[list[dict[str, Any]], dict[str, bool]]) -> None:
    steps, _ = spec
    wf = compiled(steps)
    order = wf.topological_order()
    assert sorted(order) == sorted(s["id"] for s in steps)
    position = {sid: i for i, sid in enumerate(order)}
    for sid in order:
        for parent in wf.parents(sid):
            assert position[parent] < position[sid]
            assert sid in wf.children(parent)
    assert set(wf.roots()) == {s["id"] for s in steps if not s["needs"]}
