"""consume_ready: wait for the first record only, then take what is already fetched."""

from __future__ import annotations

from typing import Any

from services.bus.fetch import consume_ready


class RecordingConsumer:
    """Hands out ``fetched`` records; records the (num_messages, timeout) of every call."""

    def __init__(self, fetched: int) -> None:
        self.fetched = list(range(fetched))
        self.calls: list[tuple[int, float]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        self.calls.append((num_messages, timeout))
        taken, self.fetched = self.fetched[:num_messages], self.fetched[num_messages:]
        return taken


def test_only_the_first_record_is_waited_for() -> None:
    consumer = RecordingConsumer(fetched=7)
    got: list[Any] = consume_ready(consumer, 500, 0.2)  # type: ignore[arg-type]
    assert got == list(range(7))
    assert consumer.calls == [(1, 0.2), (499, 0)]


def test_nothing_fetched_returns_empty_after_one_wait() -> None:
    consumer = RecordingConsumer(fetched=0)
    assert consume_ready(consumer, 500, 0.2) == []  # type: ignore[arg-type]
    assert consumer.calls == [(1, 0.2)]


def test_the_batch_bound_holds() -> None:
    consumer = RecordingConsumer(fetched=1000)
    assert len(consume_ready(consumer, 500, 0.2)) == 500  # type: ignore[arg-type]
    assert len(consume_ready(consumer, 1, 0.2)) == 1  # type: ignore[arg-type]
