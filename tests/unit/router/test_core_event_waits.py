"""The core applies ``EventDelivered`` inbox records to its waiting runs: matched once (the delivery
and the step's success in one transaction), unmatched counted, capped, rolled back on abort."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from services.contracts import serde
from services.observability import metrics
from services.router import core as core_module
from services.router import event_waits
from tests.unit.router.fakes import TENANT, TOPICS, Harness, workflow

WAITS = workflow(
    """
name: waits
version: 1
trigger: {event: go}
steps:
  - {id: open, action: noop}
  - {id: signed, needs: [open],
     wait_for: {event: doc.signed, match: "event.data.engagement == trigger.data.engagement", timeout: 60}}
  - {id: close, action: noop, needs: [signed]}
"""
)


def delivered(engagement: str, offset: int = 1, **extra: Any) -> bytes:
    body = {
        "tenant": TENANT,
        "event_type": "doc.signed",
        "key": f"sig-{engagement}",
        "data_json": json.dumps({"engagement": engagement}),
        "source": f"u.tenant.acme.triggers/0/{offset}",
        "correlation_id": "cc",
        "delivered_at": 0,
        **extra,
    }
    return serde.encode_inbox("EventDelivered", body)


def count(outcome: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value(
            "switchyard_event_deliveries_total", {"tenant": TENANT, "outcome": outcome}
        )
        or 0.0
    )


def waiting(h: Harness, engagement: str) -> str:
    run_id = h.start(engagement, {"engagement": engagement}, wf=WAITS)
    h.feed(h.result(run_id, "open"))
    assert h.state.runs[run_id].steps["signed"].status == "running"
    return run_id


def test_a_matching_event_completes_the_wait_and_the_run_goes_on() -> None:
    h = Harness(WAITS)
    run_id = waiting(h, "e1")
    other = waiting(h, "e2")
    before = count("matched")
    h.feed(delivered("e1"))
    rec = h.state.runs[run_id].steps["signed"]
    assert rec.status == "succeeded"
    assert rec.output["data"] == {"engagement": "e1"} and rec.output["key"] == "sig-e1"
    assert [c["step_id"] for c in h.out.commands(run_id)] == ["open", "close"]
    assert "step_waiting_for_event" in h.out.types(run_id)
    assert h.state.runs[other].steps["signed"].status == "running"  # another engagement: still waits
    assert list(h.state.waits.of_run) == [other]
    assert count("matched") == before + 1


def test_an_event_nobody_waits_for_yet_is_counted_unmatched_and_not_kept() -> None:
    h = Harness(WAITS)
    run_id = h.start("e1", {"engagement": "e1"}, wf=WAITS)  # still on its first step
    before = count("unmatched")
    h.feed(delivered("e1", offset=1))
    assert count("unmatched") == before + 1
    h.feed(h.result(run_id, "open"))
    assert h.state.runs[run_id].steps["signed"].status == "running"  # the early event is gone
    h.feed(delivered("e1", offset=2))  # sent again after the run reached the step
    assert h.state.runs[run_id].steps["signed"].status == "succeeded"


def test_one_event_completes_every_waiting_run_it_matches() -> None:
    h = Harness(WAITS)
    runs = [waiting(h, "same")]
    runs.append(h.start("k2", {"engagement": "same"}, wf=WAITS))
    h.feed(h.result(runs[1], "open"))
    h.feed(delivered("same"))
    assert [h.state.runs[r].steps["signed"].status for r in runs] == ["succeeded", "succeeded"]


def test_past_the_cap_the_newer_waits_do_not_see_the_event_and_it_is_counted() -> None:
    h = Harness(WAITS, event_wait_candidates=1)
    first = waiting(h, "e1")
    second = h.start("k2", {"engagement": "e1"}, wf=WAITS)
    h.feed(h.result(second, "open"))
    before = count("over_cap")
    h.feed(delivered("e1"))
    assert h.state.runs[first].steps["signed"].status == "succeeded"
    assert h.state.runs[second].steps["signed"].status == "running"
    assert count("over_cap") == before + 1
    h.feed(delivered("e1", offset=2))  # the next event reaches it: it is the oldest wait now
    assert h.state.runs[second].steps["signed"].status == "succeeded"


def test_an_aborted_delivery_is_undone_and_applied_once_when_read_again() -> None:
    h = Harness(WAITS)
    run_id = waiting(h, "e1")
    msg = h.message(delivered("e1"))
    h.core.process([msg], h.out)
    assert h.state.runs[run_id].steps["signed"].status == "succeeded"
    h.core.on_abort()  # the transaction did not commit: the run waits again, indexed
    assert h.state.runs[run_id].steps["signed"].status == "running"
    assert run_id in h.state.waits.of_run
    h.core.process([msg], h.out)  # the loop rewinds and reads the same record again
    h.core.on_committed()
    assert h.state.runs[run_id].steps["signed"].status == "succeeded"
    assert h.state.waits.of_run == {}


def test_a_timed_out_wait_leaves_the_index() -> None:
    h = Harness(WAITS)
    run_id = waiting(h, "e1")
    h.tick(61)
    run = h.state.runs[run_id]
    assert (run.steps["signed"].status, run.steps["signed"].error_kind) == ("failed", "wait_timed_out")
    assert run.status == "failed" and h.state.waits.of_run == {}


def test_cancel_while_waiting_leaves_the_index() -> None:
    h = Harness(WAITS)
    run_id = waiting(h, "e1")
    h.feed(h.control("cancel", run_id))
    assert h.state.runs[run_id].status == "cancelled" and h.state.waits.of_run == {}
    h.feed(delivered("e1"))
    assert h.state.runs[run_id].steps["signed"].status == "cancelled"


def test_a_bad_delivery_is_dead_lettered() -> None:
    h = Harness(WAITS)
    h.feed(delivered("e1", data_json="{not json"))
    h.feed(delivered("e1", event_type=""))
    assert [d["error_kind"] for d in h.out.dead_letters()] == ["invalid_json", "invalid_request"]
    assert all(d["original_topic"] == TOPICS.inbox for d in h.out.dead_letters())


def test_past_the_cost_budget_of_one_event_the_other_waits_do_not_see_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = Harness(WAITS)
    first = waiting(h, "e1")
    second = h.start("k2", {"engagement": "e1"}, wf=WAITS)
    h.feed(h.result(second, "open"))
    run = h.state.runs[first]
    one = event_waits.matching_steps(
        run, WAITS, event_waits.WaitEvent("doc.signed", {"engagement": "e1"}, "k", "s")
    )
    monkeypatch.setattr(event_waits, "EVENT_COST_BUDGET", one.cost * 1.5)
    before = count("over_cap")
    h.feed(delivered("e1"))
    assert h.state.runs[first].steps["signed"].status == "succeeded"
    assert h.state.runs[second].steps["signed"].status == "running"
    assert count("over_cap") == before + 1


def test_after_a_restore_the_waiting_runs_are_indexed_and_an_event_completes_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = Harness(WAITS)
    run_id = waiting(first, "e1")
    records = [
        (s.key.encode() if isinstance(s.key, str) else s.key, s.value)
        for s in first.out.on(TOPICS.router_state)
    ]

    def changelog(settings: Any, numbers: list[int], load: Any, deadline_s: float) -> None:
        for key, value in records:
            load(0, key, value)

    monkeypatch.setattr(core_module, "read_changelog", changelog)
    second = Harness(WAITS)
    del second.core.partitions[0]
    second.core.on_assigned([TopicPartition(TOPICS.inbox, 0)])
    second.tick()  # the loop restores the partition
    assert list(second.state.waits.of_run) == [run_id]
    second.feed(delivered("e1"))
    assert second.state.runs[run_id].steps["signed"].status == "succeeded"


def test_the_same_event_record_read_twice_completes_one_wait_only() -> None:
    twice = workflow(
        """
name: twice
version: 1
trigger: {event: go}
steps:
  - {id: first, wait_for: {event: doc.signed}}
  - {id: second, needs: [first], wait_for: {event: doc.signed}}
"""
    )
    h = Harness(twice)
    run_id = h.start("k", {}, wf=twice)
    record = delivered("e1", offset=5)
    h.feed(record)
    h.feed(record)  # e.g. re-produced to the inbox by hand: same source topic/partition/offset
    steps = h.state.runs[run_id].steps
    assert (steps["first"].status, steps["second"].status) == ("succeeded", "running")
    h.feed(delivered("e1", offset=6))  # a new record of the same event type
    assert h.state.runs[run_id].status == "succeeded"
