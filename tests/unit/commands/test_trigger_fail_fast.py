"""`switchyard trigger` to a topic that does not exist fails at once with what to do, instead of
waiting out librdkafka's message timeout (30 s and more)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from services.cli import app
from services.commands import processes
from services.config import get_settings


class FakeProducer:
    """Answers metadata from ``topics`` (or fails like an unreachable broker); records produce calls."""

    def __init__(self, topics: set[str] | None) -> None:
        self.topics = topics
        self.produced: list[str] = []

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        assert topic is not None, "one topic's metadata, not the whole cluster's"
        if self.topics is None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "Failed to get metadata"))
        if topic in self.topics:
            found = SimpleNamespace(error=None, partitions={0: object()})
        else:
            found = SimpleNamespace(error=KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART), partitions={})
        return SimpleNamespace(topics={topic: found})

    def produce(self, topic: str, **kwargs: Any) -> None:
        self.produced.append(topic)
        kwargs["on_delivery"](None, None)

    def flush(self, timeout: float = -1) -> int:
        return 0


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("SWITCHYARD_TOPIC_PREFIX", "wf")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _trigger(monkeypatch: pytest.MonkeyPatch, producer: FakeProducer, tenant: str) -> Any:
    def make(conf: dict[str, Any]) -> FakeProducer:
        assert conf["allow.auto.create.topics"] is False
        return producer

    monkeypatch.setattr(processes, "Producer", make)
    return CliRunner().invoke(
        app, ["trigger", "--tenant", tenant, "--event", "demo.linear"], env={"COLUMNS": "300"}
    )


def test_unknown_tenant_topic_is_refused_before_producing(
    monkeypatch: pytest.MonkeyPatch, cli_env: None
) -> None:
    producer = FakeProducer({"wf.tenant.acme.triggers"})
    result = _trigger(monkeypatch, producer, "nosuch")
    assert result.exit_code == 1
    assert "topic wf.tenant.nosuch.triggers does not exist" in result.output
    assert "no tenant 'nosuch' under the topic prefix 'wf'" in result.output
    assert "switchyard tenant list" in result.output
    assert producer.produced == []


def test_known_tenant_topic_is_produced_to(monkeypatch: pytest.MonkeyPatch, cli_env: None) -> None:
    producer = FakeProducer({"wf.tenant.acme.triggers"})
    result = _trigger(monkeypatch, producer, "acme")
    assert result.exit_code == 0, result.output
    assert producer.produced == ["wf.tenant.acme.triggers"]


def test_unreachable_broker_is_said_plainly(monkeypatch: pytest.MonkeyPatch, cli_env: None) -> None:
    producer = FakeProducer(None)
    result = _trigger(monkeypatch, producer, "acme")
    assert result.exit_code == 1
    assert "the broker did not answer within 5s" in result.output
    assert producer.produced == []
