"""The router core is total: whatever one inbox record or one run does, it ends in a bounded dead
letter or a failed run with a final event, and the next record is processed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.bus.record_budget import RecordTooLarge
from services.contracts import serde
from services.router import machine
from services.router.records import run_id_for
from services.router.run_store import load_record, reindex
from services.router.state import RunState, RunStatus
from tests.unit.router.fakes import (
    LINEAR,
    ONE_STEP,
    TENANT,
    TOPICS,
    Harness,
    history_problems,
    workflow,
)


def test_a_lone_surrogate_in_trigger_data_is_dead_lettered_and_the_next_record_runs() -> None:
    h = Harness()
    bad = h.request("bad", data_json='{"note": "\\ud800"}')  # valid JSON text, an unencodable string
    h.feed(bad, h.request("good", {"message": "hello"}))
    (letter,) = h.out.dead_letters()
    assert letter["error_kind"] == "invalid_json" and "surrogate" in letter["error_message"]
    assert letter["tenant"] == TENANT and letter["original_value"] == bad
    assert run_id_for(TENANT, LINEAR.name, "bad") not in h.state.runs
    good = run_id_for(TENANT, LINEAR.name, "good")
    assert h.out.types(good) == ["run_pending", "run_started", "step_scheduled"]


TWO_STEPS = workflow(
    """
name: two
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo}
  - {id: b, action: noop, needs: [a]}
"""
)


def test_a_lone_surrogate_in_a_step_output_is_kept_as_text_and_the_run_goes_on() -> None:
    h = Harness(TWO_STEPS)
    run_id = h.start("r", wf=TWO_STEPS)
    h.feed(h.result(run_id, "a", output_json='{"message": "\\udc00"}'))
    assert h.state.runs[run_id].steps["a"].output == '{"message": "\\udc00"}'
    assert h.out.types(run_id)[-2:] == ["step_succeeded", "step_scheduled"]
    restored = RunState.from_json(serde.decode(h.out.state_records(run_id)[-1].value)[1]["snapshot_json"])
    assert restored == h.state.runs[run_id]


def test_a_run_whose_first_event_is_too_large_fails_with_one_small_final_event() -> None:
    # 1e15 re-encodes as 1000000000000000.0: a small trigger grows past the record limit.
    h = Harness(max_record_bytes=64 * 1024)
    data_json = "[" + ",".join(["1e15"] * 5000) + "]"
    assert len(data_json) < 26_000
    h.feed(h.request("big", data_json=data_json), h.request("next", {"message": "x"}))
    big = run_id_for(TENANT, LINEAR.name, "big")
    events = h.out.events(big)
    assert [(e["type"], e["seq"]) for e in events] == [("run_pending", 1), ("run_failed", 2)]
    lean = events[0]["detail"]  # still names its source (accounting), without the trigger data
    assert lean["source"] == "t/0/0" and lean["trigger"]["data"] is None
    assert "RecordTooLarge" in lean["trigger_omitted"]
    assert events[1]["detail"]["error_kind"] == "record_too_large"
    run = h.state.runs[big]
    assert run.status == RunStatus.FAILED and run.compacted == "record_too_large"
    assert max(s.size for s in h.out.state_records(big)) < 2048
    assert h.out.types(run_id_for(TENANT, LINEAR.name, "next"))[:2] == ["run_pending", "run_started"]
    # A re-send is a duplicate of a run that is accounted for (failed, with the reason).
    before = len(h.out.sent)
    h.feed(h.request("big", data_json=data_json))
    assert len(h.out.events(big)) == 2 and not h.out.dead_letters()
    assert len(h.out.sent) == before


def test_a_long_key_is_kept_once_and_a_state_that_outgrows_the_record_fails_the_run() -> None:
    h = Harness(max_record_bytes=64 * 1024)
    key = "k" * 25_000  # a long Kafka key and no idempotency_key: the key is the idempotency key
    run_id = h.start(key, {"message": "m"})
    (record,) = h.out.state_records(run_id)
    assert record.value is not None and record.value.count(key.encode()) == 1
    assert record.size < len(key) + 2000
    # One large output on top of the key: the events fit, the run's state would not.
    output = json.dumps({"message": "x" * 45_000})
    h.feed(h.result(run_id, "receive", output_json=output), h.request("after", {"message": "x"}))
    events = h.out.events(run_id)
    assert not history_problems(events)
    assert [e["type"] for e in events] == [
        "run_pending",
        "run_started",
        "step_scheduled",
        "step_cancelled",
        "run_failed",
    ]
    assert events[-1]["detail"]["error_kind"] == "record_too_large"
    assert "would be" in events[-1]["detail"]["error_message"]
    run = h.state.runs[run_id]  # back to its state before the output: that fits, and is kept
    assert run.status == RunStatus.FAILED and run.compacted is None
    assert h.out.state_records(run_id)[-1].size < len(key) + 3000
    assert (
        h.state.timers.of_run(run_id) == [] and h.state.admission.active_by_tenant[TENANT] == 1
    )  # only "after"
    assert h.out.types(run_id_for(TENANT, LINEAR.name, "after"))[:2] == ["run_pending", "run_started"]
    assert not h.out.dead_letters()


def test_an_exception_in_the_machine_dead_letters_the_record_and_leaves_the_run_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness()
    run_id = h.start("r")
    before = h.state.runs[run_id].to_json()
    sent = len(h.out.sent)

    def broken(run: RunState, *args: Any, **kwargs: Any) -> machine.Effects:
        run.steps["receive"].status = "succeeded"  # half-applied, then a bug
        run.status = RunStatus.SUCCEEDED
        raise KeyError("bug")

    monkeypatch.setattr(machine, "on_result", broken)
    h.feed(h.result(run_id, "receive"))
    (letter,) = h.out.dead_letters()
    assert letter["error_kind"] == "router_error" and "KeyError" in letter["error_message"]
    assert h.state.runs[run_id].to_json() == before
    assert [s.topic for s in h.out.sent[sent:]] == [TOPICS.dlq]
    monkeypatch.undo()
    h.feed(h.result(run_id, "receive"))
    assert h.out.types(run_id)[-2:] == ["step_succeeded", "step_scheduled"]
    assert not history_problems(h.out.events(run_id))


def test_an_exception_in_the_machine_on_a_timer_fails_the_run_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(ONE_STEP, max_concurrent_runs=1)
    first = h.start("first", wf=ONE_STEP)
    second = h.start("second", wf=ONE_STEP)
    assert h.state.runs[second].status == RunStatus.PENDING

    def broken(*args: Any, **kwargs: Any) -> machine.Effects:
        raise RuntimeError("bug in a timer")

    monkeypatch.setattr(machine, "on_timer", broken)
    h.tick(advance_s=60)  # the deadline of the first run's step is due
    events = h.out.events(first)
    assert [e["type"] for e in events][-2:] == ["step_cancelled", "run_failed"]
    assert events[-1]["detail"]["error_kind"] == "router_error"
    assert "bug in a timer" in events[-1]["detail"]["error_message"]
    assert h.out.types(second)[:2] == ["run_pending", "run_started"]


def test_an_exception_while_starting_a_run_fails_that_run(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    monkeypatch.setattr(machine, "start", lambda *a, **k: 1 / 0)
    run_id = h.start("r")
    events = h.out.events(run_id)
    assert [e["type"] for e in events] == ["run_pending", "run_failed"]
    assert events[-1]["detail"]["error_kind"] == "router_error"
    assert h.state.admission.active_by_tenant.get(TENANT, 0) == 0 and not h.state.admission.pending[TENANT]


def test_undecodable_and_unknown_records_are_dead_lettered_with_their_kind() -> None:
    h = Harness()
    h.feed(b"\x00garbage", None, h.result("ghost", "a"), h.request("x", wf=ONE_STEP))
    kinds = [d["error_kind"] for d in h.out.dead_letters()]
    assert kinds == ["unknown_schema", "bad_framing", "unknown_run", "unknown_definition"]


def test_oversized_request_fields_and_forged_tenants_stay_bounded() -> None:
    h = Harness(max_record_bytes=64 * 1024)
    h.feed(h.request("r", correlation_id="c" * 50_000))
    forged = "t" * 300_000
    h.feed(h.result("ghost", "a", tenant=forged), h.control("cancel", "ghost", tenant=forged))
    letters = h.out.dead_letters()
    assert [d["error_kind"] for d in letters] == ["invalid_request", "unknown_run", "control_refused"]
    assert all(s.size <= h.out.max_record_bytes for s in h.out.sent)
    assert all(len(d["tenant"] or "") <= 256 for d in letters)


def test_a_control_decision_that_cannot_be_written_is_dead_lettered_and_the_run_is_untouched() -> None:
    h = Harness(max_record_bytes=64 * 1024)
    run_id = h.start("r")
    before = h.state.runs[run_id].to_json()
    h.feed(h.control("cancel", run_id, reason="r" * 70_000))
    (letter,) = h.out.dead_letters()
    assert letter["error_kind"] == "record_too_large"
    assert "original value truncated" in letter["error_message"]  # what the operator sent, bounded
    assert h.state.runs[run_id].to_json() == before


def test_the_outbox_failing_is_not_swallowed() -> None:
    h = Harness()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise KafkaException(KafkaError(KafkaError._STATE, "producer fenced"))

    h.out.send = refuse  # type: ignore[method-assign]
    with pytest.raises(KafkaException):
        h.feed(h.request("r"))


def test_state_written_by_older_versions_restores_and_becomes_writable() -> None:
    h = Harness()
    old: dict[str, Any] = {
        "run_id": "r1",
        "tenant": TENANT,
        "workflow": LINEAR.name,
        "version": 1,
        "partition": 0,
        "correlation_id": "c",
        "idempotency_key": "k",
        "trigger": {"event": "go", "data": {"note": "\ud800", "n": 10**30}, "key": "k", "tenant": TENANT},
        "arrival": 1,
        "created_ms": 0,
        "status": "running",
        "seq": 3,
        "steps": {
            s: {"status": "pending", "attempt": 0, "deadline_ms": None, "retry_at_ms": None, "output": None}
            | {"error_kind": None, "error_message": None, "retry_base": 0, "output_bytes": 0}
            for s in ["receive", "enrich", "pause", "done"]
        },
        "finished_ms": None,
        "replays": 0,
    }
    old["steps"]["receive"].update(status="running", attempt=1, deadline_ms=10**13)
    snapshot = json.dumps(old)  # the standard library escapes the surrogate: this is what was stored
    value = serde.encode(
        "RouterState", {"run_id": "r1", "tenant": TENANT, "snapshot_json": snapshot, "updated_at": 0}
    )
    state = h.core.new_partition(0)
    sizes: dict[str, int] = {}
    load_record(state, sizes, b"r1", value)
    load_record(state, sizes, b"r2", b"\x00broken")
    reindex(state, sizes)
    run = state.runs["r1"]
    assert "r2" not in state.runs
    assert run.trigger == {"event": "go", "data": {"note": "\\ud800", "n": 1e30}}
    assert run.trigger_view()["key"] == "k" and run.trigger_view()["tenant"] == TENANT
    assert [t.step_id for t in state.timers.of_run("r1")] == ["receive"]
    assert RunState.from_json(run.to_json()) == run
    h.core.partitions[0] = state
    h.feed(h.result("r1", "receive"))
    assert [e["seq"] for e in h.out.events("r1")] == [4, 5]


def test_failing_the_run_when_even_the_failure_cannot_be_written_dead_letters_the_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness()
    run_id = h.start("r")
    real = h.core.mapper.effects

    def always_too_large(run: RunState, effects: machine.Effects, *args: Any) -> Any:
        if any(e.type == "run_failed" for e in effects.events) or effects.commands:
            raise RecordTooLarge("events", 2_000_000, 1)
        return real(run, effects, *args)

    monkeypatch.setattr(h.core.mapper, "effects", always_too_large)
    h.feed(h.result(run_id, "receive"))
    (letter,) = h.out.dead_letters()
    assert (
        letter["error_kind"] == "record_too_large" and "failing the run failed too" in letter["error_message"]
    )
    assert h.state.runs[run_id].status == RunStatus.RUNNING


def test_the_poison_hook_dead_letters_the_isolated_record_with_the_loops_kind() -> None:
    h = Harness()
    msg = h.message(h.request("r"))
    h.core.poison(msg, h.out, "poison_record", "batch failed 3 times")
    (letter,) = h.out.dead_letters()
    assert letter["error_kind"] == "poison_record" and letter["tenant"] == TENANT
    assert letter["original_offset"] == msg.offset()
