"""The loop reports its commit progress: stalls are seen (and told by readiness), backpressure is not."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import TopicPartition

from services.bus.txloop import Outbox
from services.observability.health import Health
from tests.unit.bus.txloop_fakes import EchoProcessor, FakeBroker, FakeMessage, harness

STALL_AFTER_S = 5.0


def fill(broker: FakeBroker, count: int, partition: int = 0) -> None:
    for i in range(count):
        broker.append("t.in", partition, f"v{i}".encode())


def test_a_partition_that_keeps_failing_is_reported_stalled_after_the_bound() -> None:
    broker = FakeBroker()
    fill(broker, 5)
    processor = EchoProcessor(fails=lambda m: m.offset() == 2)
    h = harness(
        processor,
        broker=broker,
        service="router.core",
        poison_after_failures=1000,
        stall_after_s=STALL_AFTER_S,
    )
    health = Health(progress=h.board)
    health.service("router").ready.set()
    for _ in range(3):
        h.loop.run_once(0)
        h.clock.now += 1
    assert h.board.stalls() == [] and health.readiness()[0]

    h.clock.now += STALL_AFTER_S
    ok, report = health.readiness()
    assert not ok
    assert report["progress"]["stalled"]["router.core"].startswith("1 partition(s) without commit progress")
    assert "t.in[0] for 8 s, lag 5" in report["progress"]["stalled"]["router.core"]  # the whole batch fails
    assert h.committed_offset("t.in") == 0


def test_a_loop_blocked_in_its_processor_is_reported_stalled() -> None:
    """Nothing is reported while the thread is stuck: the records it took are enough."""
    broker = FakeBroker()
    fill(broker, 3)
    h_holder: list[object] = []

    class Slow(EchoProcessor):
        def process(self, messages: Sequence[FakeMessage], out: Outbox) -> None:
            h.clock.now += 3600  # an evaluation that holds the thread for an hour
            assert h.board.stalls(), "the stall must be visible while the thread is still blocked"
            h_holder.append(True)
            super().process(messages, out)

    h = harness(Slow(), broker=broker, stall_after_s=STALL_AFTER_S)
    h.loop.run_once(0)
    assert h_holder == [True]
    assert h.board.stalls() == []  # it committed in the end: progress


def test_idle_and_busy_partitions_are_not_stalls() -> None:
    broker = FakeBroker()
    fill(broker, 20)
    h = harness(EchoProcessor(), broker=broker, stall_after_s=STALL_AFTER_S)
    for _ in range(10):
        fill(broker, 3)  # records keep coming and keep being committed
        h.loop.run_once(0)
        h.clock.now += 2
    assert h.board.stalls() == []
    h.loop.run_once(0)
    h.clock.now += 600  # then nothing arrives for ten minutes
    h.loop.run_once(0)
    assert h.board.stalls() == [] and h.committed_offset("t.in") == 50


class Throttling(EchoProcessor):
    """Takes one record, leaves the rest of the partition in the topic and pauses it (intake)."""

    consumer: Any = None

    def bind(self, consumer: object) -> None:
        self.consumer = consumer

    def process(self, messages: Sequence[FakeMessage], out: Outbox) -> None:
        super().process(messages[:1], out)
        if len(messages) > 1:
            self.consumer.seek(TopicPartition("t.in", 0, messages[1].offset()))
            out.commit_position("t.in", 0, messages[1].offset())
            self.consumer.pause([TopicPartition("t.in", 0)])


def test_a_paused_partition_with_a_backlog_is_not_a_stall() -> None:
    broker = FakeBroker()
    fill(broker, 30)
    h = harness(Throttling(), broker=broker, stall_after_s=STALL_AFTER_S)
    h.loop.run_once(0)
    assert h.consumer.paused_partitions() == {("t.in", 0)} and h.committed_offset("t.in") == 1
    for _ in range(5):
        h.clock.now += 10  # paused far longer than the bound, with 29 records waiting
        h.loop.run_once(0)
    assert h.board.stalls() == []
    assert h.committed_offset("t.in") == 1 and h.loop.progress.oldest_pending_s() == 0
