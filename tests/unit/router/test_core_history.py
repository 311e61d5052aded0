"""The core with a run history behind it: late duplicate triggers are dead-lettered, never run;
runs that left memory (or shrank) are read back from their history and replayed like recent ones.

The history here is a fold of the events the core wrote (what the projector stores), so the tests
check the read-back against the core's own history, not against a hand-made copy."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from services.router import retention
from services.router.history import HistoryUnavailable, KnownRun, StoredRun, StoredStep
from services.router.records import run_id_for
from services.router.rehydrate import NotRehydratable, rehydrate
from services.router.state import RunStatus
from tests.unit.router.fakes import LINEAR, TENANT, Harness, history_problems

RETENTION_S = 10.0
AT = datetime(2026, 11, 30, tzinfo=UTC)


def project(events: list[dict[str, Any]]) -> StoredRun:
    """What the projector keeps of one run's events (runs / steps / run_events rows)."""
    first = events[0]
    pending = next(e for e in events if e["type"] == "run_pending")
    trigger = pending["detail"]["trigger"]
    state = "pending"
    steps: dict[str, dict[str, Any]] = {}
    for e in events:
        d = e.get("detail") or {}
        if e["type"].startswith("run_") and e["state"]:
            state = e["state"]
        if not e["type"].startswith("step_") or not e["step_id"]:
            continue
        s = steps.setdefault(
            e["step_id"],
            {"state": "pending", "attempts": 0, "output": None, "error_kind": None, "error_message": None},
        )
        s["state"] = e["state"] or s["state"]
        s["attempts"] = max(s["attempts"], e["attempt"] or 0)
        if e["type"] == "step_succeeded":
            s.update(output=d.get("output"), error_kind=None, error_message=None)
        elif e["type"] in ("step_failed", "step_retrying", "step_timed_out"):
            s.update(error_kind=d.get("error_kind"), error_message=d.get("error_message"))
        elif e["type"] == "step_reset":
            s.update(output=None, error_kind=None, error_message=None)
    return StoredRun(
        run_id=first["run_id"],
        tenant=first["tenant"],
        workflow=first["workflow"],
        version=first["version"],
        state=state,
        correlation_id=first["correlation_id"],
        idempotency_key=trigger["idempotency_key"],
        event_type=trigger["event_type"],
        trigger_data=trigger["data"],
        trigger_omitted="trigger_omitted" in pending["detail"],
        created_at=AT,
        last_seq=max(e["seq"] for e in events),
        replays=sum(1 for e in events if e["type"] == "run_replayed"),
        steps=tuple(StoredStep(k, **v) for k, v in steps.items()),
    )


@dataclass
class FakeHistory:
    """The projection of what ``h`` wrote, ``behind`` events short per run; ``down``: unreachable."""

    h: Harness
    behind: int = 0
    down: bool = False
    known_calls: list[list[str]] = field(default_factory=list)
    load_calls: list[str] = field(default_factory=list)
    enabled = True

    def _events(self, run_id: str) -> list[dict[str, Any]]:
        events = sorted(self.h.out.events(run_id), key=lambda e: e["seq"])
        return events[: len(events) - self.behind] if self.behind else events

    def known(self, run_ids: Collection[str]) -> dict[str, KnownRun]:
        self.known_calls.append(list(run_ids))
        if self.down:
            raise HistoryUnavailable("connection refused")
        out = {}
        for run_id in run_ids:
            if events := self._events(run_id):
                stored = project(events)
                out[run_id] = KnownRun(run_id, stored.tenant, stored.state, AT)
        return out

    def load(self, run_id: str) -> StoredRun | None:
        self.load_calls.append(run_id)
        if self.down:
            raise HistoryUnavailable("connection refused")
        events = self._events(run_id)
        return project(events) if events else None


def harness() -> tuple[Harness, FakeHistory]:
    h = Harness(finished_run_retention_s=RETENTION_S)
    history = FakeHistory(h)
    h.core.history = history
    return h, history


def finished_and_forgotten(h: Harness, key: str) -> str:
    run_id = h.start(key)
    h.finish(run_id)
    assert h.out.types(run_id)[-1] == "run_succeeded"
    h.tick(RETENTION_S + 1)
    assert run_id not in h.state.runs
    assert h.out.state_records(run_id)[-1].value is None  # tombstoned: it left router state
    return run_id


def test_a_trigger_resent_after_the_run_left_memory_is_dead_lettered_as_a_duplicate_not_run() -> None:
    h, _ = harness()
    run_id = finished_and_forgotten(h, "order-1")
    events = len(h.out.events(run_id))
    commands = len(h.out.commands())
    h.feed(h.request("order-1", {"message": "again"}))
    assert len(h.out.events(run_id)) == events and len(h.out.commands()) == commands
    assert run_id not in h.state.runs
    [letter] = h.out.dead_letters()
    assert letter["error_kind"] == "duplicate_run"
    assert (
        run_id in letter["error_message"]
        and "already in the run history (succeeded" in letter["error_message"]
    )


def test_one_history_question_per_batch_and_none_for_runs_in_memory() -> None:
    h, history = harness()
    in_memory = h.start("a")
    history.known_calls.clear()
    h.core.process([h.message(h.request(k)) for k in ("a", "b", "c", "b")], h.out)
    assert len(history.known_calls) == 1
    assert sorted(history.known_calls[0]) == sorted(run_id_for(TENANT, LINEAR.name, k) for k in "bc")
    h.feed(h.result(in_memory, "receive"))  # results alone ask nothing
    assert len(history.known_calls) == 1


def test_an_unreachable_history_admits_new_runs_deduplicated_against_memory_only() -> None:
    h, history = harness()
    history.down = True
    run_id = h.start("x")
    assert h.out.types(run_id)[:2] == ["run_pending", "run_started"]
    assert not h.out.dead_letters()


def test_replay_from_a_step_of_a_succeeded_run_that_left_memory_runs_again() -> None:
    h, _ = harness()
    run_id = finished_and_forgotten(h, "r1")
    before = h.out.events(run_id)
    h.feed(h.control("replay_run", run_id, step="pause"))
    after = h.out.events(run_id)[len(before) :]
    assert [e["type"] for e in after][:5] == [
        "control_accepted",
        "step_reset",
        "step_reset",
        "run_replayed",
        "run_started",
    ]
    scheduled = next(e for e in after if e["type"] == "step_scheduled")
    assert (scheduled["step_id"], scheduled["attempt"]) == ("pause", 2)  # attempts continue
    h.feed(h.result(run_id, "pause", attempt=2))
    h.feed(h.result(run_id, "done", attempt=2))
    assert h.out.types(run_id)[-1] == "run_succeeded"
    assert not history_problems(h.out.events(run_id))  # seq continues where the history ended
    # Its trigger data and upstream outputs came back: the replayed inputs match the first ones.
    inputs = [e["detail"]["inputs"] for e in h.out.events(run_id) if e["type"] == "step_scheduled"]
    assert inputs.count(inputs[2]) == 2


def test_replay_of_the_failed_steps_of_a_failed_run_that_left_memory() -> None:
    h, _ = harness()
    run_id = h.start("f1")
    h.feed(h.result(run_id, "receive"))
    h.feed(h.result(run_id, "enrich", ok=False))
    assert h.out.types(run_id)[-1] == "run_failed"
    h.tick(RETENTION_S + 1)
    assert run_id not in h.state.runs
    h.feed(h.control("replay_run", run_id))
    replayed = next(e for e in h.out.events(run_id) if e["type"] == "run_replayed")
    assert replayed["detail"]["steps"] == ["enrich"] and replayed["detail"]["replay"] == 1
    for step in ("enrich", "pause", "done"):
        attempt = 2 if step == "enrich" else 1
        h.feed(h.result(run_id, step, attempt=attempt))
    assert h.out.types(run_id)[-1] == "run_succeeded"
    assert not history_problems(h.out.events(run_id))


def test_the_replay_limit_counts_replays_recorded_in_the_history() -> None:
    h, _ = harness()
    run_id = finished_and_forgotten(h, "lim")
    for _ in range(h.settings.max_replays_per_run):
        h.feed(h.control("replay_run", run_id, step="done"))
        attempt = max(e["attempt"] or 0 for e in h.out.events(run_id) if e["step_id"] == "done")
        h.feed(h.result(run_id, "done", attempt=attempt))
        h.tick(RETENTION_S + 1)  # out of memory again between replays
        assert run_id not in h.state.runs
    h.feed(h.control("replay_run", run_id, step="done"))
    refused = h.out.events(run_id)[-1]
    assert refused["type"] == "control_refused" and "replay limit" in refused["detail"]["refusal"]
    assert not history_problems(h.out.events(run_id))


def test_a_compacted_run_in_memory_is_read_back_once_the_history_has_all_its_events() -> None:
    h, history = harness()
    run_id = h.start("c1")
    h.finish(run_id)
    assert h.state.runs[run_id].compacted == retention.SUCCEEDED
    history.behind = 1  # the projector has not stored run_succeeded yet
    h.feed(h.control("replay_run", run_id, step="done"))
    refused = h.out.events(run_id)[-1]
    assert refused["type"] == "control_refused"
    assert "history is not complete yet" in refused["detail"]["refusal"]
    history.behind = 0
    h.feed(h.control("replay_run", run_id, step="done"))
    assert "run_replayed" in h.out.types(run_id)
    h.feed(h.result(run_id, "done", attempt=2))
    assert h.out.types(run_id)[-1] == "run_succeeded"
    assert not history_problems(h.out.events(run_id))


def test_a_command_for_a_run_that_exists_nowhere_is_refused_saying_where_it_looked() -> None:
    h, history = harness()
    h.feed(h.control("replay_run", "no-such-run", step="done"))
    [letter] = h.out.dead_letters()
    assert letter["error_kind"] == "control_refused"
    assert "the run history does not hold it either" in letter["error_message"]
    history.down = True
    h.feed(h.control("replay_run", "no-such-run"))
    assert "the history cannot be read now" in h.out.dead_letters()[-1]["error_message"]


def test_cancel_of_a_run_that_left_memory_is_refused_in_its_history_and_it_stays_small() -> None:
    h, _ = harness()
    run_id = finished_and_forgotten(h, "k1")
    h.feed(h.control("cancel", run_id))
    refused = h.out.events(run_id)[-1]
    assert refused["detail"]["refusal"] == "run is already succeeded"
    run = h.state.runs[run_id]
    assert run.compacted is not None and run.steps == {}  # no replay state kept in memory
    assert not history_problems(h.out.events(run_id))
    h.tick(RETENTION_S + 1)  # and it leaves memory again a window later
    assert run_id not in h.state.runs


def test_without_a_reachable_history_a_compacted_run_is_refused_with_both_reasons() -> None:
    h, history = harness()
    run_id = h.start("d1")
    h.finish(run_id)
    history.down = True
    h.feed(h.control("replay_run", run_id, step="done"))
    refusal = h.out.events(run_id)[-1]["detail"]["refusal"]
    assert refusal.startswith("the run's replay state was compacted (succeeded)")
    assert "the history cannot be read now" in refusal


def test_a_run_whose_trigger_is_not_in_its_history_is_refused_saying_so() -> None:
    h, history = harness()
    run_id = finished_and_forgotten(h, "t1")
    real = history.load

    def omitted(run_id: str) -> StoredRun | None:
        stored = real(run_id)
        assert stored is not None
        return StoredRun(**{**stored.__dict__, "trigger_omitted": True, "trigger_data": None})

    history.load = omitted  # type: ignore[method-assign]
    h.feed(h.control("replay_run", run_id, step="done"))
    refusal = h.out.events(run_id)[-1]["detail"]["refusal"]
    assert "trigger_not_in_history" in refusal
    assert h.state.runs[run_id].status == RunStatus.SUCCEEDED


def test_a_replay_of_a_read_back_run_that_finishes_again_leaves_memory_again() -> None:
    h, _ = harness()
    run_id = finished_and_forgotten(h, "again")
    h.feed(h.control("replay_run", run_id, step="done"))
    h.feed(h.result(run_id, "done", attempt=2))
    assert h.state.runs[run_id].status == RunStatus.SUCCEEDED
    h.tick(RETENTION_S + 1)
    assert run_id not in h.state.runs


def stored(state: str, *steps: StoredStep, **fields: Any) -> StoredRun:
    values: dict[str, Any] = {
        "run_id": "r",
        "tenant": TENANT,
        "workflow": LINEAR.name,
        "version": LINEAR.version,
        "state": state,
        "correlation_id": "c",
        "idempotency_key": "k",
        "event_type": "go",
        "trigger_data": {"message": "m"},
        "trigger_omitted": False,
        "created_at": AT,
        "last_seq": 9,
        "replays": 1,
        "steps": steps,
    }
    return StoredRun(**{**values, **fields})


def test_rehydrate_refuses_a_run_its_history_shows_unfinished() -> None:
    for state in ("running", "pending", "retrying", "weird"):
        with pytest.raises(NotRehydratable):
            rehydrate(stored(state), LINEAR, partition=0, arrival=1, now_ms=5)


def test_rehydrate_rebuilds_steps_and_never_keeps_an_open_attempt() -> None:
    run = rehydrate(
        stored(
            "failed",
            StoredStep("receive", "succeeded", 1, {"message": "m"}, None, None),
            StoredStep("enrich", "running", 3, None, None, None),
            StoredStep("pause", "failed", 2, None, "boom", "x" * 1000),
        ),
        LINEAR,
        partition=3,
        arrival=7,
        now_ms=5,
    )
    assert (run.seq, run.replays, run.finished_ms, run.partition, run.arrival) == (9, 1, 5, 3, 7)
    assert run.trigger == {"event": "go", "data": {"message": "m"}} and run.compacted is None
    assert run.steps["receive"].output == {"message": "m"} and run.steps["receive"].output_bytes == len(
        b'{"message":"m"}'
    )
    assert run.steps["enrich"].status == "cancelled" and run.steps["enrich"].attempt == 3
    assert len(run.steps["pause"].error_message or "") == 300
    assert run.steps["done"].status == "pending" and run.steps["done"].attempt == 0  # never ran


def test_rehydrate_without_the_trigger_gives_a_compacted_run() -> None:
    run = rehydrate(stored("failed", trigger_omitted=True), LINEAR, partition=0, arrival=1, now_ms=5)
    assert run.compacted == retention.NO_TRIGGER and run.trigger == {} and run.steps == {}
