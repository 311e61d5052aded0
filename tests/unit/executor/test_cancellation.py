"""Cancelling in-flight attempts: the registry, the event filter, the processor's results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import pytest
from confluent_kafka import Message, Producer
from pydantic import BaseModel, ConfigDict

from services.bus.txloop import Outbox
from services.contracts import serde
from services.executor import ActionContext, ActionRegistry, BaseAction
from services.executor.cancellation import CancelRequest, cancel_request
from services.executor.guardrails import Guardrails
from services.executor.processor import ExecutorProcessor
from tests.unit.executor.helpers import command
from tests.unit.executor.processor_fakes import COMMANDS, TOPICS, results
from tests.unit.router.intake_fakes import RecordingProducer


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Sleeper(BaseAction):
    """Sleeps ``seconds``; records whether it saw its cancellation and cleaned up."""

    name = "sleeper"
    Input = AnyInput

    def __init__(self) -> None:
        self.cleaned_up: list[str] = []

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        try:
            await asyncio.sleep(float(inputs.model_extra.get("seconds", 30)))
        except asyncio.CancelledError:
            self.cleaned_up.append(ctx.step_id)
            raise
        return {"slept": True}


class Stubborn(Sleeper):
    """Opts out of cancellation: it always runs to its end."""

    name = "stubborn"
    cancellable: ClassVar[bool] = False


@dataclass
class Rig:
    processor: ExecutorProcessor
    producer: RecordingProducer
    out: Outbox
    sleeper: Sleeper
    offset: int = 0

    def submit(self, action: str, seconds: float, **overrides: Any) -> None:
        self.offset += 1
        record = command(action, {"seconds": seconds}, **overrides)
        msg = Message(
            topic=COMMANDS,
            partition=0,
            offset=self.offset,
            key=b"run-1",
            value=serde.encode("StepCommand", record),
        )
        self.processor.process([msg], self.out)

    def wait_running(self, run_id: str, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.processor.attempts.running(run_id):
            assert time.monotonic() < deadline, f"no attempt of {run_id} started"
            time.sleep(0.002)

    def tick_until(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(results(self.producer.records)) < count:
            assert time.monotonic() < deadline, f"fewer than {count} results within {timeout_s}s"
            time.sleep(0.002)
            self.processor.tick(self.out)
        return results(self.producer.records)


@contextmanager
def rig() -> Iterator[Rig]:
    sleeper = Sleeper()
    registry = ActionRegistry.load(entry_points=False, extra=[sleeper, Stubborn()])
    processor = ExecutorProcessor(registry, TOPICS, executor_id="ex-test", guardrails=Guardrails())
    producer = RecordingProducer()
    try:
        yield Rig(processor, producer, Outbox(cast(Producer, producer)), sleeper)
    finally:
        processor.close()


def test_a_cancelled_attempt_ends_at_once_as_cancelled_not_retryable_and_cleans_up() -> None:
    with rig() as r:
        r.submit("sleeper", 30, run_id="run-a", step_id="wait")
        r.wait_running("run-a")
        started = time.monotonic()
        assert r.processor.attempts.cancel(CancelRequest("run-a", "wait", 1, "the run was cancelled"))
        [result] = r.tick_until(1)
        assert time.monotonic() - started < 2
        assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "cancelled", False)
        assert result["error_message"] == "the run was cancelled"
        assert r.sleeper.cleaned_up == ["wait"]
        assert not r.processor.attempts.running("run-a") and r.processor.in_flight() == 0


def test_only_the_named_attempt_is_cancelled() -> None:
    with rig() as r:
        r.submit("sleeper", 30, run_id="run-a", step_id="wait", attempt=2)
        r.submit("sleeper", 0.2, run_id="run-a", step_id="other")
        r.wait_running("run-a")
        assert not r.processor.attempts.cancel(CancelRequest("run-a", "wait", 1, "stale attempt"))
        assert not r.processor.attempts.cancel(CancelRequest("run-b", "wait", 2, "another run"))
        assert r.processor.attempts.cancel(CancelRequest("run-a", "wait", 2, "the run failed"))
        found = {res["step_id"]: res for res in r.tick_until(2)}
        assert found["wait"]["error_kind"] == "cancelled"
        assert found["other"]["status"] == "succeeded"


def test_an_action_that_opts_out_runs_to_its_end() -> None:
    with rig() as r:
        r.submit("stubborn", 0.3, run_id="run-s", step_id="keep")
        r.wait_running("run-s")
        assert not r.processor.attempts.cancel(CancelRequest("run-s", "keep", 1, "the run was cancelled"))
        [result] = r.tick_until(1)
        assert result["status"] == "succeeded"


def test_a_cancellation_nobody_asked_for_still_propagates() -> None:
    """Shutdown cancels tasks too: that is no ``cancelled`` result, the task ends cancelled."""
    from services.executor.execute import execute_command

    registry = ActionRegistry.load(entry_points=False, extra=[Sleeper()])

    async def scenario() -> None:
        task = asyncio.create_task(execute_command(registry, command("sleeper", {"seconds": 30})))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())


def test_a_long_attempt_holds_its_offset_without_holding_the_results_behind_it() -> None:
    with rig() as r:
        r.submit("sleeper", 30, run_id="run-long", step_id="long")
        for i in range(50):
            r.submit("sleeper", 0, run_id=f"run-{i}", step_id="quick")
        found = r.tick_until(50)
        assert {res["run_id"] for res in found} == {f"run-{i}" for i in range(50)}
        assert r.processor.in_flight() == 1  # only the long one is still looked at on each poll
        assert r.out.positions[(COMMANDS, 0)] == 1  # committed up to the long attempt's command
        assert r.processor.attempts.cancel(CancelRequest("run-long", "long", 1, "the run was cancelled"))
        r.tick_until(51)
        r.processor.tick(r.out)
        assert r.out.positions[(COMMANDS, 0)] == 52  # everything consumed is now committed


# --- the events-topic filter ---------------------------------------------------------------------
def event(type_: str, run_id: str = "run-1", step_id: str | None = "s1", attempt: int | None = 1) -> Message:
    record = {
        "event_id": "e-1",
        "run_id": run_id,
        "tenant": "acme",
        "workflow": "wf",
        "version": 1,
        "seq": 3,
        "type": type_,
        "step_id": step_id,
        "attempt": attempt,
        "state": "cancelled",
        "at": 0,
        "correlation_id": "corr-1",
        "detail_json": '{"reason": "run_failed"}'
        if type_ == "step_cancelled" and run_id == "failed"
        else None,
    }
    headers: list[tuple[str, str | bytes | None]] = [
        ("tenant", b"acme"),
        ("run_id", run_id.encode()),
        ("correlation_id", b"corr-1"),
    ]
    return Message(
        topic="wf.events", partition=0, offset=1, value=serde.encode("RunEvent", record), headers=headers
    )


def test_step_cancelled_and_step_timed_out_of_a_running_run_ask_for_a_cancellation() -> None:
    running = {"run-1", "failed"}.__contains__
    assert cancel_request(event("step_cancelled"), running) == CancelRequest(
        "run-1", "s1", 1, "the run was cancelled"
    )
    assert cancel_request(event("step_cancelled", run_id="failed"), running) == CancelRequest(
        "failed", "s1", 1, "the run failed (another step failed or the run could not go on)"
    )
    timed_out = cancel_request(event("step_timed_out"), running)
    assert timed_out is not None and "timed the attempt out" in timed_out.reason


def test_other_events_and_other_runs_ask_for_nothing() -> None:
    assert cancel_request(event("step_started"), {"run-1"}.__contains__) is None
    assert cancel_request(event("run_cancelled", step_id=None, attempt=None), {"run-1"}.__contains__) is None
    assert cancel_request(event("step_cancelled", run_id="run-2"), {"run-1"}.__contains__) is None


def test_events_of_runs_not_running_here_are_not_decoded() -> None:
    undecodable = Message(
        topic="wf.events", partition=0, offset=1, value=b"junk", headers=[("run_id", b"run-9")]
    )
    assert cancel_request(undecodable, lambda run_id: False) is None
    assert cancel_request(undecodable, lambda run_id: True) is None  # decoded: junk asks for nothing
    headerless = Message(topic="wf.events", partition=0, offset=1, value=b"junk")
    assert cancel_request(headerless, lambda run_id: True) is None
