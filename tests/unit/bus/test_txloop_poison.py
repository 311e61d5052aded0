"""The poison-batch guard of the transactional loop, over fake clients (no broker)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bus.poison import Bisection, FailureCounter, blames_records, fed_positions
from services.bus.txloop import Outbox
from services.contracts import serde
from services.observability.metrics import REGISTRY
from tests.unit.bus.txloop_fakes import (
    EchoProcessor,
    FakeBroker,
    FakeMessage,
    Harness,
    harness,
    kafka_exception,
)

SERVICE = "test.poison"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": SERVICE, **labels}) or 0.0


def fill(broker: FakeBroker, count: int, topic: str = "t.in", partition: int = 0) -> None:
    for i in range(count):
        broker.append(topic, partition, f"v{i}".encode(), key=f"k{i}".encode())


def outputs(h: Harness) -> Counter[bytes | None]:
    return Counter(h.broker.values("t.out"))


def dead_letters(h: Harness) -> list[dict[str, object]]:
    return [serde.decode(value, expected="DeadLetter")[1] for value in h.broker.values("t.dlq")]


def expected(offsets: range | list[int], partition: int = 0, topic: str = "t.in") -> Counter[bytes | None]:
    return Counter(f"{topic}:{partition}:{o}".encode() for o in offsets)


def test_a_processor_exception_on_one_record_dead_letters_exactly_that_record() -> None:
    broker = FakeBroker()
    fill(broker, 50)
    processor = EchoProcessor(fails=lambda m: m.offset() == 37)
    h = harness(processor, broker=broker, service=SERVICE)
    steps_before = metric("switchyard_bisection_steps_total")
    poison_before = metric("switchyard_poison_records_total")

    h.drive(until=lambda: h.committed_offset("t.in") == 50)

    assert outputs(h) == expected([o for o in range(50) if o != 37])  # the 49 others, once each
    [letter] = dead_letters(h)
    assert letter["error_kind"] == "poison_record"
    assert letter["service"] == SERVICE
    assert (letter["original_topic"], letter["original_partition"], letter["original_offset"]) == (
        "t.in",
        0,
        37,
    )
    assert letter["original_key"] == b"k37" and letter["original_value"] == b"v37"
    assert "ValueError: cannot handle offset 37" in str(letter["error_message"])
    # rolled back after every failed attempt, and never called on with unrolled-back state
    assert processor.raised >= 3 and processor.on_abort_calls == processor.raised
    assert processor.violations == []
    assert metric("switchyard_poison_records_total") == poison_before + 1
    assert metric("switchyard_bisection_steps_total") > steps_before
    # every committed transaction's outputs were committed with its offsets: nothing is left open
    assert not h.producer.in_txn


def test_the_batch_is_retried_before_bisection_and_the_loop_goes_on_afterwards() -> None:
    broker = FakeBroker()
    fill(broker, 10)
    processor = EchoProcessor(fails=lambda m: m.offset() == 0)
    h = harness(processor, broker=broker, service=SERVICE, poison_after_failures=4)

    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert processor.batches[:4] == [list(range(10))] * 4  # the same batch, 4 times, then bisected
    assert outputs(h) == expected(range(1, 10))

    fill(broker, 5)  # later records of the partition flow as usual, in one transaction
    commits = h.producer.commits
    h.drive(until=lambda: h.committed_offset("t.in") == 15)
    assert h.producer.commits == commits + 1
    assert outputs(h) == expected(range(1, 15))


def test_record_too_large_for_one_record_dead_letters_that_record() -> None:
    broker = FakeBroker()
    fill(broker, 50)
    processor = EchoProcessor(huge=lambda m: m.offset() == 12)
    h = harness(processor, broker=broker, service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in") == 50)

    assert outputs(h) == expected([o for o in range(50) if o != 12])
    [letter] = dead_letters(h)
    assert letter["original_offset"] == 12
    assert "RecordTooLarge" in str(letter["error_message"])
    assert processor.on_abort_calls == processor.raised and processor.violations == []


def test_a_record_the_broker_refuses_at_commit_is_isolated() -> None:
    broker = FakeBroker()
    fill(broker, 20)
    processor = EchoProcessor()
    h = harness(processor, broker=broker, service=SERVICE)
    too_large = KafkaError(
        KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large", txn_requires_abort=True
    )
    h.producer.refuse = lambda value: too_large if value == b"t.in:0:5" else None

    h.drive(until=lambda: h.committed_offset("t.in") == 20)

    assert outputs(h) == expected([o for o in range(20) if o != 5])
    [letter] = dead_letters(h)
    assert letter["original_offset"] == 5 and "MSG_SIZE_TOO_LARGE" in str(letter["error_message"])
    assert processor.on_abort_calls == h.producer.aborts  # one roll-back per aborted transaction


def test_poison_records_on_several_partitions_are_each_isolated() -> None:
    broker = FakeBroker()
    fill(broker, 30, partition=0)
    fill(broker, 30, partition=1)
    bad = {(0, 3), (1, 17), (1, 29)}
    processor = EchoProcessor(fails=lambda m: (m.partition(), m.offset()) in bad)
    h = harness(processor, broker=broker, partitions=[("t.in", 0), ("t.in", 1)], service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in", 0) == 30 and h.committed_offset("t.in", 1) == 30)

    good = expected([o for o in range(30) if (0, o) not in bad], 0) + expected(
        [o for o in range(30) if (1, o) not in bad], 1
    )
    assert outputs(h) == good
    assert sorted((d["original_partition"], d["original_offset"]) for d in dead_letters(h)) == sorted(bad)
    assert processor.on_abort_calls == processor.raised and processor.violations == []


class PoisonHookProcessor(EchoProcessor):
    def __init__(self, hook_fails: bool = False, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.hook_fails = hook_fails
        self.poisoned: list[tuple[int, str, str]] = []

    def poison(self, msg: FakeMessage, out: Outbox, error_kind: str, message: str) -> None:
        if self.hook_fails:
            raise RuntimeError("hook bug")
        self.poisoned.append((msg.offset(), error_kind, message))
        out.send("t.dlq.mine", f"mine:{msg.offset()}".encode())


def test_the_processor_poison_hook_writes_the_dead_letter_when_it_has_one() -> None:
    broker = FakeBroker()
    fill(broker, 8)
    processor = PoisonHookProcessor(fails=lambda m: m.offset() == 6)
    h = harness(processor, broker=broker, service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in") == 8)

    assert [(o, kind) for o, kind, _ in processor.poisoned] == [(6, "poison_record")]
    assert "cannot handle offset 6" in processor.poisoned[0][2]
    assert broker.values("t.dlq.mine") == [b"mine:6"]
    assert broker.values("t.dlq") == []
    assert outputs(h) == expected([0, 1, 2, 3, 4, 5, 7])


def test_a_failing_poison_hook_falls_back_to_the_loops_dead_letter() -> None:
    broker = FakeBroker()
    fill(broker, 8)
    processor = PoisonHookProcessor(hook_fails=True, fails=lambda m: m.offset() == 2)
    h = harness(processor, broker=broker, service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in") == 8)

    assert [d["original_offset"] for d in dead_letters(h)] == [2]
    assert outputs(h) == expected([0, 1, 3, 4, 5, 6, 7])


@pytest.mark.parametrize(
    ("call", "error"),
    [
        ("commit_transaction", kafka_exception(KafkaError._TIMED_OUT, abort=True)),
        ("send_offsets_to_transaction", kafka_exception(KafkaError.NOT_COORDINATOR, abort=True)),
        ("commit_transaction", kafka_exception(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True)),
        ("produce", kafka_exception(KafkaError._STATE)),
        ("commit_transaction", kafka_exception(KafkaError._FENCED, fatal=True)),
        # a record error that is fatal is the producer's state, not the record's
        ("commit_transaction", kafka_exception(KafkaError.MSG_SIZE_TOO_LARGE, fatal=True)),
    ],
)
def test_infrastructure_errors_never_bisect_nor_dead_letter(call: str, error: KafkaException) -> None:
    broker = FakeBroker()
    fill(broker, 50)
    processor = EchoProcessor()
    h = harness(processor, broker=broker, service=SERVICE)
    steps_before = metric("switchyard_bisection_steps_total")
    h.producer.faults[call] = [error] * 4  # more failures in a row than poison_after_failures

    h.drive(until=lambda: h.committed_offset("t.in") == 50)

    assert dead_letters(h) == []
    assert outputs(h) == expected(range(50))
    assert metric("switchyard_bisection_steps_total") == steps_before
    assert all(batch == list(range(50)) for batch in processor.batches)  # always the whole batch


def test_a_producer_that_lost_the_cluster_is_replaced_not_blamed_on_records() -> None:
    """The broker-restart cure stays: a producer marked stale (its error callback saw the brokers
    go) is replaced before the next transaction, or instead of committing when it was marked
    during the batch; the batch is read again, nothing is dead-lettered."""
    broker = FakeBroker()
    fill(broker, 30)
    lost = KafkaError(KafkaError._ALL_BROKERS_DOWN, "all brokers down")
    h_ref: list[Harness] = []

    class LosesTheCluster(EchoProcessor):
        def process(self, messages: Sequence[FakeMessage], out: Outbox) -> None:
            super().process(messages, out)
            if len(h_ref[0].producers) == 1:  # the brokers go away while the first batch is produced
                h_ref[0].loop._on_producer_error(lost)

    processor = LosesTheCluster()
    h = harness(processor, broker=broker, service=SERVICE)
    h_ref.append(h)
    steps_before = metric("switchyard_bisection_steps_total")

    h.drive(until=lambda: h.committed_offset("t.in") == 30)
    assert len(h.producers) == 2 and h.producers[0].commits == 0  # never committed through it
    h.loop._on_producer_error(lost)  # lost between transactions: replaced before the next one
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 35)

    assert len(h.producers) == 3
    assert outputs(h) == expected(range(35)) and dead_letters(h) == []
    assert metric("switchyard_bisection_steps_total") == steps_before


def test_an_infrastructure_failure_during_bisection_abandons_it_safely() -> None:
    broker = FakeBroker()
    fill(broker, 40)
    processor = EchoProcessor(fails=lambda m: m.offset() == 30)
    h = harness(processor, broker=broker, service=SERVICE)
    original_commit = h.producer.commit_transaction
    commits = {"n": 0}

    def flaky_commit(timeout: float = -1) -> None:
        commits["n"] += 1
        if commits["n"] == 1:  # the first commit of the bisection meets a coordinator move
            raise kafka_exception(KafkaError.NOT_COORDINATOR, abort=True)
        original_commit(timeout)

    h.producer.commit_transaction = flaky_commit  # type: ignore[method-assign]

    h.drive(until=lambda: h.committed_offset("t.in") == 40)

    assert outputs(h) == expected([o for o in range(40) if o != 30])
    assert [d["original_offset"] for d in dead_letters(h)] == [30]
    assert processor.violations == []


def test_a_transient_processor_exception_is_retried_not_dead_lettered() -> None:
    broker = FakeBroker()
    fill(broker, 10)
    failures = {"left": 2}

    def fails(msg: FakeMessage) -> bool:
        if msg.offset() == 4 and failures["left"]:
            failures["left"] -= 1
            return True
        return False

    processor = EchoProcessor(fails=fails)
    h = harness(processor, broker=broker, service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert dead_letters(h) == [] and outputs(h) == expected(range(10))


def test_a_tick_that_raises_does_not_end_the_loop_nor_blame_a_record() -> None:
    broker = FakeBroker()
    fill(broker, 10)
    ticks = {"n": 0}

    def tick_fails() -> bool:
        ticks["n"] += 1
        return ticks["n"] <= 5

    processor = EchoProcessor(tick_fails=tick_fails)
    h = harness(processor, broker=broker, service=SERVICE)
    errors_before = metric("switchyard_processor_errors_total", stage="tick")

    h.drive(until=lambda: h.committed_offset("t.in") == 10)

    assert dead_letters(h) == [] and outputs(h) == expected(range(10))
    assert metric("switchyard_processor_errors_total", stage="tick") == errors_before + 5
    assert processor.on_abort_calls == 5


class ThrottlingProcessor(EchoProcessor):
    """Like intake: a partition over its budget is seeked back to the first record not taken, that
    position is committed and the partition paused; ``tick`` resumes it. Partition 1 gets one
    record per transaction."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.consumer: Any = None

    def bind(self, consumer: object) -> None:
        self.consumer = consumer

    def process(self, messages: Sequence[FakeMessage], out: Outbox) -> None:
        taken: list[FakeMessage] = []
        held: int | None = None
        for msg in messages:
            if msg.partition() == 1 and (held is not None or any(m.partition() == 1 for m in taken)):
                held = msg.offset() if held is None else held
                continue
            taken.append(msg)
        super().process(taken, out)
        if held is not None:
            self.consumer.seek(TopicPartition("t.in", 1, held))
            out.commit_position("t.in", 1, held)
            self.consumer.pause([TopicPartition("t.in", 1)])

    def tick(self, out: Outbox) -> None:
        self.consumer.resume([TopicPartition("t.in", 1)])


def test_bisection_leaves_partitions_the_processor_holds_to_the_processor() -> None:
    broker = FakeBroker()
    fill(broker, 20, partition=0)
    fill(broker, 20, partition=1)
    processor = ThrottlingProcessor(fails=lambda m: (m.partition(), m.offset()) == (0, 9))
    h = harness(processor, broker=broker, partitions=[("t.in", 0), ("t.in", 1)], service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in", 0) == 20 and h.committed_offset("t.in", 1) == 20)

    # nothing of the held partition lost or doubled, the poison record alone dead-lettered
    assert outputs(h) == expected([o for o in range(20) if o != 9], 0) + expected(range(20), 1)
    assert [(d["original_partition"], d["original_offset"]) for d in dead_letters(h)] == [(0, 9)]


class PipelinedProcessor(EchoProcessor):
    """Like the executor: records of partition 1 "run" in memory until the next ``tick``, which
    publishes them; meanwhile the partition is committed up to its oldest running record."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.running: list[FakeMessage] = []

    def process(self, messages: Sequence[FakeMessage], out: Outbox) -> None:
        super().process([m for m in messages if m.partition() != 1], out)
        self.running.extend(m for m in messages if m.partition() == 1)
        if self.running:
            out.commit_position("t.in", 1, self.running[0].offset())

    def tick(self, out: Outbox) -> None:
        for msg in self.running:
            out.send("t.out", f"t.in:1:{msg.offset()}".encode())
        if self.running:
            out.commit_position("t.in", 1, self.running[-1].offset() + 1)
        self.running = []

    def on_abort(self) -> None:
        super().on_abort()
        self.running = []  # they run again when the rewound partition delivers them


def test_bisection_rolls_back_a_processor_that_runs_ahead_of_its_commits() -> None:
    broker = FakeBroker()
    fill(broker, 20, partition=0)
    fill(broker, 20, partition=1)
    processor = PipelinedProcessor(fails=lambda m: (m.partition(), m.offset()) == (0, 1))
    h = harness(processor, broker=broker, partitions=[("t.in", 0), ("t.in", 1)], service=SERVICE)

    h.drive(until=lambda: h.committed_offset("t.in", 0) == 20 and h.committed_offset("t.in", 1) == 20)

    # the records of partition 1 still running when the bisection ended ran again, not twice
    assert outputs(h) == expected([o for o in range(20) if o != 1], 0) + expected(range(20), 1)
    assert [(d["original_partition"], d["original_offset"]) for d in dead_letters(h)] == [(0, 1)]


def test_blame() -> None:
    assert blames_records(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, txn_requires_abort=True))
    assert blames_records(KafkaError(KafkaError.INVALID_RECORD))
    assert blames_records(KafkaError(KafkaError._UNKNOWN_PARTITION))
    for code in (
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError.NOT_COORDINATOR,
    ):
        assert not blames_records(KafkaError(code, txn_requires_abort=True))
    assert not blames_records(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, fatal=True))
    assert not blames_records(None)


def message(topic: str, partition: int, offset: int) -> Message:
    """A :class:`FakeMessage` where the poison helpers take a Message (they call its methods only)."""
    return cast(Message, FakeMessage(topic, partition, offset, b""))


def test_failure_counter_counts_the_same_batch_only() -> None:
    counter = FailureCounter(3)
    batch = [message("a", 0, 5), message("a", 0, 6)]
    longer = [*batch, message("a", 0, 7)]  # more fetched, same start: the same batch
    assert not counter.failed(batch)
    assert not counter.failed(longer)
    assert counter.failed(batch)
    assert not counter.failed([message("a", 0, 6)])  # another start: counted anew


@settings(max_examples=100, deadline=None)
@given(
    layout=st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=40),
    bad_index=st.data(),
)
def test_bisection_isolates_the_failing_record_and_commits_prefixes(
    layout: list[int], bad_index: st.DataObject
) -> None:
    """Simulated with a deterministic failure: every window is a prefix of what is left, the
    poison record is found having failed alone, every other record is committed once, and it
    takes a logarithmic number of transactions."""
    offsets: dict[int, int] = {}
    records: list[Message] = []
    for partition in layout:
        offsets[partition] = offsets.get(partition, 100) + 1
        records.append(message("t", partition, offsets[partition]))
    bad = bad_index.draw(st.sampled_from(records))
    plan = Bisection(records)
    committed: list[Message] = []
    failed_alone = len(records) == 1
    steps = 0
    while not plan.done:
        found = plan.known_poison()
        if found is None:
            steps += 1
            window = plan.next_window()
            assert window == plan.pending[: len(window)] and window
            if bad not in window:
                committed.extend(window)
                plan.succeeded(window, fed_positions(window))
                continue
            failed_alone = len(window) == 1
            found = plan.failed(window)
            if found is None:
                continue
        assert found is bad and failed_alone
        plan.poisoned(found)
    assert sorted(map(id, committed)) == sorted(id(m) for m in records if m is not bad)
    assert steps <= 2 * max(1, len(records)).bit_length() + 1
    for partition, last in offsets.items():
        assert plan.committed[("t", partition)] == last + 1


def test_a_lost_broker_connection_replaces_the_producer_before_the_next_transaction() -> None:
    """The broker-restart cure (librdkafka #5511): a ``_TRANSPORT`` report marks the producer stale,
    and so does one the *new* producer makes while it initialises (the broker still coming back):
    it is replaced again at the next boundary rather than trusted."""
    broker = FakeBroker()
    fill(broker, 10)
    down = KafkaError(KafkaError._TRANSPORT, "127.0.0.1:29092/1: Connect to ipv4#127.0.0.1:29092 failed")
    h = harness(EchoProcessor(), broker=broker, service=SERVICE)
    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    assert len(h.producers) == 1
    h.producer.reports.append(down)
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 15)
    assert len(h.producers) == 2 and h.producers[0].commits >= 1

    h2 = harness(EchoProcessor(), broker=FakeBroker(), service=SERVICE, init_reports=[down])
    fill(h2.broker, 3)
    h2.drive(until=lambda: h2.committed_offset("t.in") == 3)
    assert len(h2.producers) == 2 and h2.producers[0].commits == 0  # never trusted after its report
    assert outputs(h) == expected(range(15)) and dead_letters(h) == []


def test_the_loops_consumer_losing_the_broker_replaces_the_producer_too() -> None:
    """After a broker restart the producer may report nothing while the loop's consumer reports the
    disconnect: the producer is replaced all the same (librdkafka #5511's hang is otherwise met)."""
    broker = FakeBroker()
    fill(broker, 10)
    h = harness(EchoProcessor(), broker=broker, service=SERVICE)
    h.drive(until=lambda: h.committed_offset("t.in") == 10)
    h.loop._on_consumer_error(KafkaError(KafkaError._TRANSPORT, "127.0.0.1:29092/1: Disconnected"))
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 15)
    assert len(h.producers) == 2
    h.loop._on_consumer_error(KafkaError(KafkaError._MAX_POLL_EXCEEDED, "not a lost connection"))
    fill(broker, 5)
    h.drive(until=lambda: h.committed_offset("t.in") == 20)
    assert len(h.producers) == 2
    assert outputs(h) == expected(range(20)) and dead_letters(h) == []
