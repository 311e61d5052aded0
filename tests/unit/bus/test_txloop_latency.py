"""No wait but the broker's commit: the loop commits at once when idle and batches when busy, and
an idle transactional producer reconnects without a backoff (issue 17, "Latency after idle")."""

from __future__ import annotations

from typing import Any

from services.bus.clients import (
    PRODUCER_IDLE_CLOSE_MS,
    PRODUCER_RECONNECT_BACKOFF_MAX_MS,
    transactional_producer_config,
)
from tests.unit.bus.txloop_fakes import (
    EchoProcessor,
    FakeBroker,
    FakeConsumer,
    FakeMessage,
    harness,
    settings,
)


class TimedConsumer(FakeConsumer):
    """Records the ``(num_messages, timeout)`` of every consume call."""

    def __init__(self, broker: FakeBroker, partitions: list[tuple[str, int]]) -> None:
        super().__init__(broker, partitions)
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.calls.append((num_messages, timeout))
        return super().consume(num_messages, timeout)


def timed_harness(broker: FakeBroker, max_batch: int) -> tuple[Any, TimedConsumer, EchoProcessor]:
    processor = EchoProcessor()
    h = harness(processor, broker=broker, max_batch=max_batch)
    consumer = TimedConsumer(broker, [("t.in", 0)])
    consumer.subscribe(["t.in"], on_assign=h.loop._on_assign)  # the recording fake
    h.loop.consumer = consumer  # type: ignore[assignment]
    return h, consumer, processor


def test_an_idle_loop_commits_the_first_record_without_waiting_for_more() -> None:
    broker = FakeBroker()
    h, consumer, processor = timed_harness(broker, max_batch=50)
    h.loop.run_once(0.1)  # idle: waits for input, nothing committed
    assert h.producer.commits == 0 and consumer.calls == [(1, 0.1)]

    broker.append("t.in", 0, b"first")
    consumer.calls.clear()
    h.loop.run_once(0.1)
    # Only the first record is waited for; the rest of the batch is what is already fetched.
    assert consumer.calls == [(1, 0.1), (49, 0)]
    assert processor.batches == [[0]]
    assert h.producer.commits == 1 and h.committed_offset("t.in") == 1
    assert broker.values("t.out") == [b"t.in:0:0"]


def test_a_busy_loop_commits_what_is_fetched_in_batches_up_to_max_batch() -> None:
    broker = FakeBroker()
    for i in range(120):
        broker.append("t.in", 0, f"v{i}".encode())
    h, consumer, processor = timed_harness(broker, max_batch=50)
    for _ in range(4):
        h.loop.run_once(0.1)
    assert [len(b) for b in processor.batches] == [50, 50, 20]
    assert h.producer.commits == 3 and h.committed_offset("t.in") == 120
    # Never more than the first record waited for: no timeout on the batch's remainder.
    assert all(timeout == 0 for num, timeout in consumer.calls if num > 1)


def test_an_idle_producer_reconnects_at_once_after_its_idle_close() -> None:
    """librdkafka resets a broker's reconnect backoff only when its last connection attempt is
    older than ``reconnect.backoff.max.ms``; idle closes come every ``connections.max.idle.ms``.
    The backoff (at most its max, plus the +50% jitter) must be over before the next idle close,
    or the backoff doubles up to the max and the first transaction after idle waits for it."""
    conf = transactional_producer_config(settings(), "t.txn")
    assert conf["connections.max.idle.ms"] == PRODUCER_IDLE_CLOSE_MS  # kept: broker-restart cure
    backoff_max = conf["reconnect.backoff.max.ms"]
    assert backoff_max == PRODUCER_RECONNECT_BACKOFF_MAX_MS
    assert 2 * backoff_max < conf["connections.max.idle.ms"]
    assert conf.get("reconnect.backoff.ms", 100) <= backoff_max


def test_the_transactional_producer_settings_can_still_be_overridden() -> None:
    conf = transactional_producer_config(settings(), "t.txn", **{"reconnect.backoff.max.ms": 2_000})
    assert conf["reconnect.backoff.max.ms"] == 2_000
