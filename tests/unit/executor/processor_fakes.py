"""Driving the executor processor without a broker: real Outbox over a recording producer, real
Message objects, an action whose behaviour each test chooses per step."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from confluent_kafka import Message, Producer
from pydantic import BaseModel, ConfigDict

from services.bus.record_budget import producible_limit
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import KAFKA_MESSAGE_MAX_BYTES
from services.contracts import serde
from services.executor import ActionContext, ActionRegistry, BaseAction
from services.executor.guardrails import Guardrails
from services.executor.permissions import GrantsLookup
from services.executor.processor import ExecutorProcessor
from tests.unit.executor.helpers import command
from tests.unit.router.intake_fakes import Produced, RecordingProducer

TOPICS = Topics("wf")
COMMANDS = TOPICS.commands


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


Behaviour: TypeAlias = Callable[[ActionContext], Any]


def _succeed(_ctx: ActionContext) -> dict[str, Any]:
    return {"ok": True}


class Scripted(BaseAction):
    """Returns (or raises) what the behaviour registered for the attempt's step id gives."""

    name = "scripted"
    Input = AnyInput

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}

    async def run(self, ctx: ActionContext, inputs: Any, /) -> Any:
        behaviour: Behaviour = self.behaviours.get(ctx.step_id, _succeed)
        return behaviour(ctx)


@dataclass
class Harness:
    processor: ExecutorProcessor
    producer: RecordingProducer
    out: Outbox
    action: Scripted
    offset: int = 0

    def message(self, value: bytes | None, key: bytes | None = b"run-1") -> Message:
        self.offset += 1
        return Message(topic=COMMANDS, partition=0, offset=self.offset, key=key, value=value)

    def command(self, step_id: str, behaviour: Behaviour | None = None, **overrides: Any) -> Message:
        if behaviour is not None:
            self.action.behaviours[step_id] = behaviour
        return self.message(serde.encode("StepCommand", command("scripted", step_id=step_id, **overrides)))

    def run(self, *messages: Message, timeout_s: float = 10.0) -> list[Produced]:
        """Process one batch, then tick until every attempt's result is out (or the deadline)."""
        before = len(self.producer.records)
        self.processor.process(list(messages), self.out)
        deadline = time.monotonic() + timeout_s
        while self.processor.in_flight() and time.monotonic() < deadline:
            time.sleep(0.002)
            self.processor.tick(self.out)
        assert not self.processor.in_flight(), "attempts still running at the deadline"
        return self.producer.records[before:]


@contextmanager
def harness(
    max_record_bytes: int = producible_limit(KAFKA_MESSAGE_MAX_BYTES),
    grants: GrantsLookup | None = None,
) -> Iterator[Harness]:
    action = Scripted()
    registry = ActionRegistry.load(entry_points=False, extra=[action])
    processor = ExecutorProcessor(
        registry,
        TOPICS,
        executor_id="ex-test",
        inbox_partitions=4,
        guardrails=Guardrails(grants=grants),
    )
    producer = RecordingProducer()
    try:
        yield Harness(processor, producer, Outbox(cast(Producer, producer), max_record_bytes), action)
    finally:
        processor.close()


def results(records: list[Produced]) -> list[dict[str, Any]]:
    found = []
    for r in records:
        if r.topic == TOPICS.inbox:
            kind, body = serde.decode_inbox(r.value)
            assert kind == "StepResult"
            found.append(body)
    return found


def dead_letters(records: list[Produced]) -> list[dict[str, Any]]:
    return [serde.decode(r.value, expected="DeadLetter")[1] for r in records if r.topic == TOPICS.dlq]


def only_result(records: list[Produced]) -> dict[str, Any]:
    [result] = results(records)
    if result["output_json"] is not None:
        json.loads(result["output_json"])
    return result
