"""Adaptive batches: the fetched backlog fills a batch (bounded), an idle projector writes at once."""

from __future__ import annotations

import gc
from typing import Any, cast

from confluent_kafka import Consumer

from services.config import Settings
from services.projector.runner import Projector, gc_paused


class Msg:
    def __init__(self, partition: int, offset: int, size: int = 10, topic: str = "p.events") -> None:
        self._where = (topic, partition, offset)
        self._value = b"x" * size

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]

    def value(self) -> bytes:
        return self._value


class FakeConsumer:
    """Returns up to ``num_messages`` of its backlog per call; records each call's timeout."""

    def __init__(self, backlog: list[Msg], on_call: Any = None) -> None:
        self.backlog = backlog
        self.timeouts: list[float] = []
        self.on_call = on_call

    def consume(self, num_messages: int, timeout: float) -> list[Msg]:
        self.timeouts.append(timeout)
        if self.on_call is not None:
            self.on_call(len(self.timeouts))
        # like librdkafka: a call returns at most what one fetch brought (here 100 records)
        taken, self.backlog = self.backlog[: min(num_messages, 100)], self.backlog[min(num_messages, 100) :]
        return taken


def projector(**kwargs: Any) -> Projector:
    p = Projector(
        Settings(topic_prefix="p", database_url="postgresql://u@h/db"), poll_timeout_s=0.5, **kwargs
    )
    p._assigned = {("p.events", 0), ("p.events", 1)}
    return p


def batch(p: Projector, consumer: FakeConsumer) -> list[Msg]:
    return cast(list[Msg], p.next_batch(cast(Consumer, consumer)))


def test_a_backlog_fills_the_batch_up_to_its_record_bound() -> None:
    consumer = FakeConsumer([Msg(0, i) for i in range(1200)])
    p = projector(batch_size=1000)
    assert len(batch(p, consumer)) == 1000
    assert set(consumer.timeouts) == {0}  # never waits while records are there
    assert len(batch(p, consumer)) == 200


def test_the_byte_bound_ends_a_batch() -> None:
    consumer = FakeConsumer([Msg(0, i, size=1000) for i in range(1000)])
    assert len(batch(projector(batch_size=5000, max_batch_bytes=150_000), consumer)) == 200


def test_idle_waits_for_one_record_then_writes_it_at_once() -> None:
    consumer = FakeConsumer([])
    assert batch(projector(), consumer) == []
    assert consumer.timeouts == [0, 0.5]

    arriving = FakeConsumer([])

    def arrive_while_waiting(calls: int) -> None:
        if arriving.timeouts[-1] > 0:
            arriving.backlog = [Msg(0, 7)]

    arriving.on_call = arrive_while_waiting
    got = batch(projector(), arriving)
    assert [m.offset() for m in got] == [7]
    assert arriving.timeouts == [0, 0.5, 0]  # one wait, then no more: written at once


def test_records_of_a_partition_revoked_while_gathering_are_dropped() -> None:
    p = projector(batch_size=1000)

    def revoke_on_second_call(calls: int) -> None:
        if calls == 2:
            p._assigned.discard(("p.events", 1))

    consumer = FakeConsumer([Msg(i % 2, i) for i in range(150)], on_call=revoke_on_second_call)
    got = batch(p, consumer)
    assert got and {m.partition() for m in got} == {0}
    assert len(got) == 75


def test_the_collector_is_paused_per_batch_and_restored_by_the_last_one_out() -> None:
    assert gc.isenabled()
    outer = gc_paused()
    inner = gc_paused()  # a second instance's batch overlapping the first
    outer.__enter__()
    inner.__enter__()
    assert not gc.isenabled()
    outer.__exit__(None, None, None)
    assert not gc.isenabled()  # the other batch is still being written
    inner.__exit__(None, None, None)
    assert gc.isenabled()
