"""librdkafka #5511 over fake clients: a ``send_offsets_to_transaction`` that never returns is
abandoned with its producer, the batch is read again through a new one, nothing is lost or
written twice, and the process does not wait for the hang guard to end it."""

from __future__ import annotations

import threading
import time
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError

from services.bus import txloop
from tests.unit.bus.test_txloop_poison import dead_letters, expected, fill, outputs
from tests.unit.bus.txloop_fakes import EchoProcessor, FakeBroker, FakeProducer, harness, kafka_exception


@pytest.fixture(autouse=True)
def quick_abandon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(txloop, "OFFSETS_ABANDON_S", 1.0)
    monkeypatch.setattr(txloop, "OFFSETS_ABANDON_LOST_S", 0.1)
    monkeypatch.setattr(txloop, "OFFSETS_POLL_S", 0.02)


def test_a_hung_send_offsets_is_abandoned_with_its_producer_and_the_batch_redone() -> None:
    broker = FakeBroker()
    fill(broker, 20)
    h = harness(EchoProcessor(), broker=broker)
    release = threading.Event()
    h.producers[0].hang_offsets = release
    try:
        started = time.monotonic()
        h.drive(until=lambda: h.committed_offset("t.in") == 20)
        took = time.monotonic() - started
    finally:
        release.set()  # the abandoned call ends, fenced; nobody is waiting for it
    assert len(h.producers) == 2 and h.producers[0].commits == 0
    assert 1.0 <= took < 5  # the abandon budget (1 s here), far from the hang guard's 180 s
    assert outputs(h) == expected(range(20)) and dead_letters(h) == []


def test_a_hang_after_the_clients_reported_the_loss_is_abandoned_sooner() -> None:
    broker = FakeBroker()
    fill(broker, 10)
    h = harness(EchoProcessor(), broker=broker)
    release = threading.Event()
    first = h.producers[0]
    first.hang_offsets = release

    def lose_the_broker_during_the_call() -> None:
        # Queued, as librdkafka queues it, until the loop polls the producer while it waits.
        time.sleep(0.05)
        first.reports.append(KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down"))

    threading.Thread(target=lose_the_broker_during_the_call, daemon=True).start()
    try:
        started = time.monotonic()
        h.drive(until=lambda: h.committed_offset("t.in") == 10)
        took = time.monotonic() - started
    finally:
        release.set()
    assert len(h.producers) == 2 and first.commits == 0
    assert took < 1.0  # under OFFSETS_ABANDON_S: given up on the report, not on the budget
    assert outputs(h) == expected(range(10)) and dead_letters(h) == []


def test_send_offsets_errors_still_propagate_from_the_helper_thread() -> None:
    broker = FakeBroker()
    fill(broker, 10)
    h = harness(EchoProcessor(), broker=broker)
    h.producers[0].faults["send_offsets_to_transaction"] = [kafka_exception(KafkaError._STATE, abort=True)]
    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert len(h.producers) == 1 and h.producers[0].aborts >= 1  # aborted and redone, not replaced
    assert outputs(h) == expected(range(10)) and dead_letters(h) == []


def test_too_many_abandoned_calls_still_blocked_exit_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each abandoned call keeps its producer and a thread; past MAX_ABANDONED_CALLS still blocked,
    the client is wedged for good and the process exits (code 70) for its supervisor."""
    monkeypatch.setattr(txloop, "MAX_ABANDONED_CALLS", 2)
    broker = FakeBroker()
    fill(broker, 5)
    h = harness(EchoProcessor(), broker=broker)
    exits: list[int] = []
    h.loop.guard._exit = exits.append
    release = threading.Event()
    original = h.loop._producer_factory

    def hanging_producer(conf: dict[str, Any]) -> Any:
        producer = cast(FakeProducer, original(conf))
        producer.hang_offsets = release  # every new producer hangs too: a wedged client
        return producer

    h.loop._producer_factory = hanging_producer
    h.producers[0].hang_offsets = release
    try:
        for _ in range(3):
            h.loop.run_once(0)
            if exits:
                break
    finally:
        release.set()
    assert exits == [70]
    assert h.committed_offset("t.in") == 0  # nothing committed through a hung producer


def test_a_rewind_waits_out_a_moving_group_coordinator() -> None:
    """``committed()`` raising NOT_COORDINATOR (not flagged retriable) while the coordinator moves
    is read again, not raised out of the loop (it once ended router r1 in the cluster pause
    scenario: 401 of 867 runs never finished)."""
    broker = FakeBroker()
    fill(broker, 10)
    h = harness(EchoProcessor(), broker=broker)
    h.producers[0].faults["commit_transaction"] = [kafka_exception(KafkaError._STATE, abort=True)]
    h.consumer.committed_faults = [kafka_exception(KafkaError.NOT_COORDINATOR)] * 2
    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert h.consumer.committed_faults == []  # both failures met, then the rewind went through
    assert outputs(h) == expected(range(10)) and dead_letters(h) == []
