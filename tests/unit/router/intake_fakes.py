"""Fakes for driving router intake without a broker: the real :class:`Outbox` over a recording
producer (so the record budget is the real one), a recording consumer, registries, builders."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, Message, Producer, TopicPartition

from services.bus.record_budget import producible_limit
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import KAFKA_MESSAGE_MAX_BYTES, Settings
from services.contracts import serde
from services.router.intake import IntakeProcessor
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_text

PREFIX = "wf"
TOPICS = Topics(PREFIX)


@dataclass
class Produced:
    topic: str
    key: str | bytes | None
    value: bytes | None
    partition: int | None
    headers: list[tuple[str, str | bytes | None]] | None


class RecordingProducer:
    """What :class:`Outbox` calls on a producer: ``produce`` (recorded) and ``poll``."""

    def __init__(self) -> None:
        self.records: list[Produced] = []

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.records.append(
            Produced(
                topic, kwargs.get("key"), kwargs.get("value"), kwargs.get("partition"), kwargs.get("headers")
            )
        )

    def poll(self, timeout: float = 0) -> int:
        return 0


@dataclass
class RecordingConsumer:
    """The consumer calls intake makes for backpressure, recorded, doing nothing."""

    calls: list[tuple[str, list[tuple[str, int, int]]]] = field(default_factory=list)

    def _record(self, what: str, partitions: Iterable[TopicPartition]) -> None:
        self.calls.append((what, [(p.topic, p.partition, p.offset) for p in partitions]))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._record("pause", partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._record("resume", partitions)

    def seek(self, partition: TopicPartition) -> None:
        self._record("seek", [partition])


class Tenants:
    def __init__(self, *configs: TenantConfig) -> None:
        self.configs = {c.tenant: c for c in configs}

    def get(self, key: str) -> TenantConfig | None:
        return self.configs.get(key)


class Catalog:
    def __init__(self, workflows: dict[str, list[CompiledWorkflow]]) -> None:
        self.workflows = workflows

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        return self.workflows.get(tenant, [])


def workflow(name: str, event: str = "go", filter_: str | None = None) -> CompiledWorkflow:
    trigger: dict[str, Any] = {"event": event}
    if filter_ is not None:
        trigger["filter"] = filter_
    text = json.dumps(
        {"name": name, "version": 1, "trigger": trigger, "steps": [{"id": "a", "action": "noop"}]}
    )
    return compile_workflow(load_definition_text(text, filename=f"{name}.json"))


def tenant(name: str, **overrides: Any) -> TenantConfig:
    data: dict[str, Any] = {
        "tenant": name,
        "trigger_rate": 1e9,
        "trigger_burst": 1_000_000_000,
        "operators": ["ops@" + name],
    }
    data.update(overrides)
    return TenantConfig.model_validate(data)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"topic_prefix": PREFIX, "internal_partitions": 4, "global_operators": []}
    values.update(overrides)
    return Settings(**values)


@dataclass
class Harness:
    intake: IntakeProcessor
    producer: RecordingProducer
    consumer: RecordingConsumer
    out: Outbox
    offset: int = 0

    def feed(self, *messages: Message) -> list[Produced]:
        """Process ``messages`` in one batch; the records produced for them."""
        before = len(self.producer.records)
        self.intake.process(list(messages), self.out)
        return self.producer.records[before:]

    def message(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        partition: int = 0,
    ) -> Message:
        self.offset += 1
        return Message(
            topic=topic, partition=partition, offset=self.offset, key=key, value=value, headers=headers
        )

    def trigger(self, tenant_id: str, value: bytes | None, **kwargs: Any) -> list[Produced]:
        return self.feed(self.message(TOPICS.tenant_triggers(tenant_id), value, **kwargs))


def harness(
    tenants: Iterable[TenantConfig] = (),
    workflows: dict[str, list[CompiledWorkflow]] | None = None,
    max_record_bytes: int = producible_limit(KAFKA_MESSAGE_MAX_BYTES),
    **setting_overrides: Any,
) -> Harness:
    producer = RecordingProducer()
    consumer = RecordingConsumer()
    intake = IntakeProcessor(settings(**setting_overrides), Catalog(workflows or {}), Tenants(*tenants))
    intake.bind(cast(Consumer, consumer))
    return Harness(intake, producer, consumer, Outbox(cast(Producer, producer), max_record_bytes))


def dead_letters(records: list[Produced]) -> list[dict[str, Any]]:
    return [serde.decode(r.value, expected="DeadLetter")[1] for r in records if r.topic == TOPICS.dlq]


def run_requests(records: list[Produced]) -> list[dict[str, Any]]:
    found = []
    for r in records:
        if r.topic == TOPICS.inbox:
            kind, body = serde.decode_inbox(r.value)
            if kind == "RunRequested":
                found.append(body)
    return found


def control_commands(records: list[Produced]) -> list[dict[str, Any]]:
    found = []
    for r in records:
        if r.topic == TOPICS.inbox:
            kind, body = serde.decode_inbox(r.value)
            if kind == "ControlCommand":
                found.append(body)
    return found


def kinds(records: list[Produced]) -> list[str]:
    return [str(d["error_kind"]) for d in dead_letters(records)]
