"""The projector reports its commit progress: a batch it cannot write makes /readyz tell the truth."""

from __future__ import annotations

import threading
from typing import Any, cast

import psycopg
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from services.config import Settings
from services.observability.progress import ProgressBoard
from services.projector import runner
from services.projector.runner import Projector
from services.projector.writer import BatchResult

EVENTS = ("p.events", 0)


class Msg:
    """A record of the events topic (not Avro: decoded to a reject, which is still written)."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return EVENTS[0]

    def partition(self) -> int:
        return EVENTS[1]

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b"not avro"

    def key(self) -> None:
        return None


class FakeConsumer:
    """Positions and cached high watermarks, as the projector's observation reads them."""

    def __init__(self, position: int, end: int) -> None:
        self.position_at, self.end = position, end

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.position_at = max(tp.offset for tp in offsets)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(*EVENTS)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.position_at) for tp in partitions]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        return 0, self.end


class NoWait(threading.Event):
    """``stop`` for the retry loop: never set, and its backoff does not sleep."""

    def wait(self, timeout: float | None = None) -> bool:
        return False


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def projector(clock: Clock, board: ProgressBoard) -> Projector:
    settings = Settings(topic_prefix="p", database_url="postgresql://u@h/db", stall_after_s=60)
    p = Projector(settings, progress=board, clock=clock)
    board.register(p.progress)
    p._assigned = {EVENTS}
    p.progress.assigned([EVENTS])
    p.engine = cast(Any, object())
    p._stop = NoWait()
    return p


def test_a_batch_the_database_keeps_refusing_reads_as_stalled_until_it_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, board = Clock(), ProgressBoard()
    p = projector(clock, board)
    consumer = FakeConsumer(position=0, end=3)
    seen: list[list[str]] = []

    def write_batch(*_args: Any) -> BatchResult:
        seen.append([s.describe() for s in board.stalls()])
        if len(seen) <= 3:  # the database is down for three attempts, 25 s each
            clock.now += 25
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return BatchResult()

    monkeypatch.setattr(runner, "write_batch", write_batch)
    messages = cast(list[Message], [Msg(0), Msg(1), Msg(2)])
    assert p.process(cast(Consumer, consumer), messages) is not None

    assert seen[:3] == [[], [], []]  # 0, 25 and 50 s after the batch was taken: not yet
    assert seen[3] == ["p.events[0] for 75 s, lag 3"]
    assert board.stalls() == []  # committed: progress again
    p.observe(cast(Consumer, consumer))
    clock.now += 600
    assert board.stalls() == []  # caught up: an idle projector is not stalled


def test_records_waiting_without_a_commit_read_as_stalled() -> None:
    clock, board = Clock(), ProgressBoard()
    p = projector(clock, board)
    consumer = FakeConsumer(position=5, end=9)
    p.observe(cast(Consumer, consumer))
    clock.now += 61
    assert [s.describe() for s in board.stalls()] == ["p.events[0] for 61 s, lag 4"]
