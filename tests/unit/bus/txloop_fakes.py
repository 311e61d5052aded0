"""In-memory stand-ins for the Kafka clients of :class:`services.bus.txloop.TransactionalLoop`.

A :class:`FakeBroker` holds partition logs and a consumer group's committed offsets; the
:class:`FakeProducer` is transactional (produced records and offsets become visible only at
commit, vanish at abort) and can be told to fail calls or to have records refused at commit; the
:class:`FakeConsumer` reads the logs from the committed offsets, honours seek, pause and resume.
Only the protocol the loop and the test processors use is implemented. No I/O, no threads.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from services.bus.txloop import Outbox, TransactionalLoop
from services.config import Settings
from services.observability.progress import ProgressBoard

Key = tuple[str, int]
Headers = list[tuple[str, bytes]] | None


@dataclass
class FakeMessage:
    _topic: str
    _partition: int
    _offset: int
    _value: bytes | None
    _key: bytes | None = None
    _headers: Headers = None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers:
        return self._headers

    def error(self) -> None:
        return None


@dataclass
class FakeBroker:
    logs: dict[Key, list[FakeMessage]] = field(default_factory=lambda: defaultdict(list))
    committed: dict[Key, int] = field(default_factory=dict)

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: Headers = None,
    ) -> FakeMessage:
        log = self.logs[(topic, partition)]
        msg = FakeMessage(topic, partition, len(log), value, key, headers)
        log.append(msg)
        return msg

    def values(self, topic: str) -> list[bytes | None]:
        return [m.value() for (t, _), log in sorted(self.logs.items()) if t == topic for m in log]

    def messages(self, topic: str) -> list[FakeMessage]:
        return [m for (t, _), log in sorted(self.logs.items()) if t == topic for m in log]


def kafka_exception(
    code: int, *, retriable: bool = False, abort: bool = False, fatal: bool = False
) -> KafkaException:
    return KafkaException(
        KafkaError(code, "injected", fatal=fatal, retriable=retriable, txn_requires_abort=abort)
    )


class FakeProducer:
    """Transactional: records and offsets are applied to the broker at commit only."""

    def __init__(self, broker: FakeBroker, error_cb: Callable[[KafkaError], None] | None = None) -> None:
        self.broker = broker
        self.error_cb = error_cb
        #: errors the client reports (through ``error_cb``) at its next poll
        self.reports: list[KafkaError] = []
        #: errors it reports while ``init_transactions`` runs (e.g. a bootstrap broker that is down)
        self.reports_on_init: list[KafkaError] = []
        self.in_txn = False
        self.pending: list[tuple[str, int, bytes | None, bytes | None, Headers]] = []
        self.offsets: list[TopicPartition] = []
        #: call name -> exceptions to raise, one per call, in order
        self.faults: dict[str, list[KafkaException]] = defaultdict(list)
        #: returns the error the broker answers for a record (at commit), or None to accept it
        self.refuse: Callable[[bytes | None], KafkaError | None] = lambda value: None
        self.commits = 0
        self.aborts = 0
        self.calls: list[str] = []
        #: the brokers its metadata lists (a cluster's size, for the loop's lost-connection rule)
        self.brokers = 1
        #: set: ``send_offsets_to_transaction`` blocks until it is released, then fails as a
        #: fenced producer's would (librdkafka #5511's hang, the call's timeout ignored)
        self.hang_offsets: threading.Event | None = None

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> SimpleNamespace:
        self._fault("list_topics")
        return SimpleNamespace(brokers={node: object() for node in range(1, self.brokers + 1)}, topics={})

    def _fault(self, call: str) -> None:
        self.calls.append(call)
        if self.faults[call]:
            raise self.faults[call].pop(0)

    def init_transactions(self, timeout: float = -1) -> None:
        self._fault("init_transactions")
        self.reports.extend(self.reports_on_init)

    def begin_transaction(self) -> None:
        self._fault("begin_transaction")
        assert not self.in_txn, "begin_transaction with a transaction open"
        self.in_txn = True

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        headers: Headers = None,
        **_: Any,
    ) -> None:
        self._fault("produce")
        assert self.in_txn, "produce outside a transaction"
        raw_key = key.encode() if isinstance(key, str) else key
        self.pending.append((topic, max(partition, 0), raw_key, value, headers))

    def send_offsets_to_transaction(
        self, positions: list[TopicPartition], group: Any, timeout: float = -1
    ) -> None:
        self._fault("send_offsets_to_transaction")
        if self.hang_offsets is not None:
            self.hang_offsets.wait()
            raise KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer producer", fatal=True))
        assert self.in_txn
        self.offsets.extend(positions)

    def commit_transaction(self, timeout: float = -1) -> None:
        self._fault("commit_transaction")
        assert self.in_txn
        for _, _, _, value, _ in self.pending:
            error = self.refuse(value)
            if error is not None:
                raise KafkaException(error)  # the transaction stays open: it must be aborted
        for topic, partition, key, value, headers in self.pending:
            self.broker.append(topic, partition, value, key, headers)
        for tp in self.offsets:
            self.broker.committed[(tp.topic, tp.partition)] = tp.offset
        self.commits += 1
        self._clear()

    def abort_transaction(self, timeout: float = -1) -> None:
        self._fault("abort_transaction")
        self.aborts += 1
        self._clear()

    def _clear(self) -> None:
        self.in_txn = False
        self.pending = []
        self.offsets = []

    def poll(self, timeout: float = -1) -> int:
        served, self.reports = self.reports, []
        for error in served:
            if self.error_cb is not None:
                self.error_cb(error)
        return len(served)

    def purge(self, *args: Any, **kwargs: Any) -> None:
        self._clear()

    def flush(self, timeout: float = -1) -> int:
        return 0


class FakeConsumer:
    """Reads ``partitions`` from the group's committed offsets; assigns them at the first consume."""

    def __init__(self, broker: FakeBroker, partitions: Sequence[Key]) -> None:
        self.broker = broker
        self.partitions = list(partitions)
        self.positions: dict[Key, int] = {}
        self.paused: set[Key] = set()
        self.on_assign: Callable[..., None] | None = None
        self.assigned = False
        #: exceptions ``committed()`` raises, one per call, in order (a group coordinator moving)
        self.committed_faults: list[KafkaException] = []
        self.seeks: list[tuple[Key, int]] = []

    def subscribe(self, topics: list[str], on_assign: Callable[..., None], **_: Any) -> None:
        self.on_assign = on_assign

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        if not self.assigned and self.on_assign is not None:
            self.assigned = True
            for key in self.partitions:
                self.positions[key] = self.broker.committed.get(key, 0)
            self.on_assign(self, [TopicPartition(t, p) for t, p in self.partitions])
        out: list[FakeMessage] = []
        progressed = True
        while len(out) < num_messages and progressed:  # one record per partition in turn
            progressed = False
            for key in self.partitions:
                log = self.broker.logs.get(key, [])
                position = self.positions.get(key, 0)
                if key in self.paused or position >= len(log) or len(out) >= num_messages:
                    continue
                out.append(log[position])
                self.positions[key] = position + 1
                progressed = True
        return out

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.partitions] if self.assigned else []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[TopicPartition]:
        if self.committed_faults:
            raise self.committed_faults.pop(0)
        return [
            TopicPartition(tp.topic, tp.partition, self.broker.committed.get((tp.topic, tp.partition), -1001))
            for tp in partitions
        ]

    def seek(self, partition: TopicPartition) -> None:
        offset = 0 if partition.offset == OFFSET_BEGINNING else partition.offset
        self.positions[(partition.topic, partition.partition)] = offset
        self.seeks.append(((partition.topic, partition.partition), offset))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update((tp.topic, tp.partition) for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)

    def forget_paused(self, partitions: list[TopicPartition]) -> None:
        self.resume(partitions)

    def paused_partitions(self) -> frozenset[Key]:
        return frozenset(self.paused)

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        return 0, len(self.broker.logs.get((partition.topic, partition.partition), []))

    def consumer_group_metadata(self) -> str:
        return "group-metadata"

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """A loop over fakes, driven one iteration at a time."""

    broker: FakeBroker
    consumer: FakeConsumer
    producers: list[FakeProducer]
    loop: TransactionalLoop
    board: ProgressBoard
    clock: Clock

    @property
    def producer(self) -> FakeProducer:
        return self.producers[-1]

    def drive(self, until: Callable[[], bool], max_iterations: int = 500) -> int:
        for iteration in range(max_iterations):
            self.loop.run_once(0)
            if until():
                return iteration + 1
        raise AssertionError(f"not done after {max_iterations} iterations")

    def committed_offset(self, topic: str, partition: int = 0) -> int:
        return self.broker.committed.get((topic, partition), 0)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {"kafka_bootstrap_servers": "fake:9092", "topic_prefix": "t", "max_batch": 50}
    values.update(overrides)
    return Settings(**values)


def harness(
    processor: Any,
    *,
    partitions: Iterable[Key] = (("t.in", 0),),
    broker: FakeBroker | None = None,
    service: str = "test.loop",
    init_reports: Sequence[KafkaError] = (),
    brokers: int = 1,
    **setting_overrides: Any,
) -> Harness:
    broker = broker if broker is not None else FakeBroker()
    consumer = FakeConsumer(broker, list(partitions))
    producers: list[FakeProducer] = []

    def new_producer(conf: dict[str, Any]) -> FakeProducer:
        producers.append(FakeProducer(broker, conf.get("error_cb")))
        producers[-1].brokers = brokers
        if len(producers) == 1:  # the first one only: a broker that comes back
            producers[-1].reports_on_init = list(init_reports)
        return producers[-1]

    board = ProgressBoard()
    clock = Clock()
    loop = TransactionalLoop(
        settings(**setting_overrides),
        service=service,
        group_id="t.group",
        transactional_id="t.txn",
        subscribe=["t.in"],
        processor=processor,
        consumer_factory=lambda conf: consumer,  # type: ignore[arg-type,return-value]
        producer_factory=new_producer,  # type: ignore[arg-type]
        progress=board,
        clock=clock,
        sleep=lambda seconds: None,
    )
    loop.start()
    OPEN.append(loop)
    return Harness(broker, consumer, producers, loop, board, clock)


#: Loops made by :func:`harness`, closed after each test by ``tests/unit/bus/conftest.py`` (each
#: runs a hang-guard thread).
OPEN: list[TransactionalLoop] = []


class EchoProcessor:
    """Writes ``topic:partition:offset`` of each input to ``t.out``; raises on the records
    ``fails`` picks, or makes them too large to produce (``huge``). Tracks its aborts."""

    def __init__(
        self,
        fails: Callable[[FakeMessage], bool] = lambda m: False,
        huge: Callable[[FakeMessage], bool] = lambda m: False,
        tick_fails: Callable[[], bool] = lambda: False,
    ) -> None:
        self.fails = fails
        self.huge = huge
        self.tick_fails = tick_fails
        self.raised = 0
        self.on_abort_calls = 0
        self.dirty = False  # raised, and not rolled back yet
        self.violations: list[str] = []
        self.batches: list[list[int]] = []

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        pass

    def process(self, messages: Sequence[FakeMessage], out: Outbox) -> None:
        if self.dirty:
            self.violations.append("process called after a failure without on_abort")
        self.batches.append([m.offset() for m in messages])
        for msg in messages:
            if self.fails(msg):
                self.raised += 1
                self.dirty = True
                raise ValueError(f"cannot handle offset {msg.offset()} \ud800")
            value = f"{msg.topic()}:{msg.partition()}:{msg.offset()}".encode()
            if self.huge(msg):
                value = value + b" " * 2_000_000
            try:
                out.send("t.out", value, key=msg.key())
            except Exception:
                self.raised += 1
                self.dirty = True
                raise

    def tick(self, out: Outbox) -> None:
        if self.tick_fails():
            self.raised += 1
            self.dirty = True
            raise RuntimeError("tick bug")

    def on_abort(self) -> None:
        self.on_abort_calls += 1
        self.dirty = False
