"""The transactional consume → process → produce loop shared by every Kafka→Kafka hop.

One iteration: wait at most ``commit_interval`` for a record, take up to ``max_batch`` records
that are already fetched, hand them to the processor, which writes its output to an
:class:`Outbox`; then ``send_offsets_to_transaction`` with the consumer group metadata and
commit. Under load a transaction therefore carries a whole batch; when the input is idle it
commits as soon as the first record arrives, so latency stays low.

No transaction is ever open while the consumer is polled, so a rebalance never meets an open
transaction: the offsets of revoked partitions were committed with the last batch ("commit on
revoke"), and a lost partition has nothing of ours pending. Errors of the transaction API are
handled by class (:mod:`services.bus.txn_guard`): a retriable one repeats the call, an abortable
one aborts the transaction, rewinds the consumer to its committed offsets and lets the processor
discard what it did in memory (``on_abort``); a fatal one replaces the producer too. Blocking
calls are watched for the client hangs that a broker restart can cause.

The loop knows nothing of workflows: processors own the semantics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from services.bus.clients import consumer_config, transactional_producer_config
from services.bus.record_budget import RecordTooLarge, producible_limit, record_size
from services.bus.txn_guard import Action, HangGuard, classify, kafka_error, retrying
from services.config import KAFKA_MESSAGE_MAX_BYTES, Settings
from services.observability import metrics

log = logging.getLogger(__name__)

CALL_BUDGET_S = 30.0  # one transactional call, retries included
ABORT_BUDGET_S = 10.0  # abort_transaction, before falling back to a new producer
REWIND_BUDGET_S = 120.0  # reading committed offsets back after an abort
INIT_BUDGET_S = 120.0  # init_transactions of a new producer (the broker may be restarting)


class Outbox:
    """What one transaction produces. Processors call :meth:`send`; the loop owns the producer.

    Every record is checked against ``max_record_bytes`` (encoded key + value + headers) before it
    is produced: :meth:`send` raises :class:`RecordTooLarge` and produces nothing, so the caller
    can fail the run or dead-letter the input instead of failing the transaction forever."""

    def __init__(
        self, producer: Producer, max_record_bytes: int = producible_limit(KAFKA_MESSAGE_MAX_BYTES)
    ) -> None:
        self._producer = producer
        self.max_record_bytes = max_record_bytes
        self.count = 0
        self.positions: dict[tuple[str, int], int] = {}

    def commit_position(self, topic: str, partition: int, offset: int) -> None:
        """Commit ``offset`` (the next record to read) for a partition the processor seeked back,
        e.g. to leave a throttled tenant's backlog in its topic."""
        self.positions[(topic, partition)] = offset

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        size = record_size(key, value, headers)
        if size > self.max_record_bytes:
            raise RecordTooLarge(topic, size, self.max_record_bytes)
        kwargs: dict[str, Any] = {"key": key, "value": value, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let deliveries drain
        self.count += 1


class Processor(Protocol):
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Restore state for newly assigned partitions (called before their first record)."""

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget state of partitions this instance no longer owns."""

    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        """Handle a batch. Must not raise for bad input: dead-letter it through ``out`` instead."""

    def tick(self, out: Outbox) -> None:
        """Periodic work inside the transaction (timers, deadlines)."""

    def on_abort(self) -> None:
        """Undo in-memory effects of the aborted batch (typically: restore from the changelog)."""

    # Optional: ``bind(consumer)`` is called once with the loop's consumer, for processors that
    # pause, resume or seek partitions (backpressure); ``poll_timeout() -> float | None`` shortens
    # the wait for input while the processor has work completing in the background.


class TransactionalLoop:
    def __init__(
        self,
        settings: Settings,
        *,
        service: str,
        group_id: str,
        transactional_id: str,
        subscribe: list[str],
        processor: Processor,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.processor = processor
        self.transactional_id = transactional_id
        self.consumer = Consumer(consumer_config(settings, group_id, **(consumer_overrides or {})))
        self.producer = self._new_producer()
        self.guard = HangGuard(service, overdue_after_s=CALL_BUDGET_S + 5)
        bind = getattr(processor, "bind", None)
        if bind is not None:
            bind(self.consumer)
        self.subscribe = subscribe
        self.assigned: set[tuple[str, int]] = set()
        self.ready = threading.Event()
        self._failures = 0

    def _new_producer(self) -> Producer:
        self._cluster_lost = False
        producer = Producer(
            transactional_producer_config(
                self.settings, self.transactional_id, error_cb=self._on_producer_error
            )
        )
        retrying(
            producer.init_transactions, budget_s=INIT_BUDGET_S, what="init_transactions", service=self.service
        )
        return producer

    def _on_producer_error(self, error: KafkaError) -> None:
        """Served by the producer's polls. A lost broker connection marks the producer stale: after
        a broker restart librdkafka may keep a dead group-coordinator handle cached and block
        ``send_offsets_to_transaction`` (librdkafka #5511), so the loop replaces the producer at
        the next transaction boundary instead of calling it."""
        lost = error.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT)
        if lost and self._cluster_lost:
            log.debug("producer error", extra={"service": self.service, "error": str(error)})
            return  # already marked stale: one warning per outage is enough
        self._cluster_lost = self._cluster_lost or lost
        log.warning("producer error", extra={"service": self.service, "error": str(error)})

    # --- rebalance callbacks (run inside consume()) -------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        self.processor.on_assigned(partitions)
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.ready.set()
        log.info(
            "partitions assigned",
            extra={
                "service": self.service,
                "partitions": [f"{p.topic}[{p.partition}]" for p in partitions],
                "restore_s": round(time.monotonic() - started, 3),
            },
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.processor.on_revoked(partitions)
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)
        log.info("partitions revoked", extra={"service": self.service, "count": len(partitions)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.processor.on_revoked(partitions)
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)
        log.warning("partitions lost", extra={"service": self.service, "count": len(partitions)})

    # --- main loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(
            self.subscribe, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        timeout = self.settings.commit_interval_ms / 1000
        hint = getattr(self.processor, "poll_timeout", None)
        try:
            while not stop.is_set():
                wanted = hint() if hint is not None else None
                messages = self._next_batch(timeout if wanted is None else wanted)
                self._transaction(messages)
        finally:
            self.close()

    def _next_batch(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` for the first record only, then take whatever else is already
        fetched (up to ``max_batch``). ``consume(max_batch, timeout)`` would wait the whole timeout
        unless a full batch arrived, adding the commit interval to every hop under light load."""
        first = self.consumer.consume(1, timeout)
        if not first:
            return first
        return first + self.consumer.consume(self.settings.max_batch - 1, 0)

    def _transaction(self, messages: list[Message]) -> None:
        records = [m for m in messages if not _is_benign_error(m)]
        started = time.monotonic()
        self.producer.poll(0)  # serve error callbacks: did the producer lose the cluster?
        if self._cluster_lost:
            self._replace_producer("the producer lost its broker connections")
        # After a replacement: the outbox must hold the new producer.
        out = Outbox(self.producer, producible_limit(self.settings.message_max_bytes))
        try:
            self.producer.begin_transaction()
            if records:
                self.processor.process(records, out)
            self.processor.tick(out)
            if not records and out.count == 0:
                self.producer.abort_transaction(CALL_BUDGET_S)  # nothing happened: no round trip
                return
            current = {
                (p.topic, p.partition): p
                for p in self.consumer.position(self.consumer.assignment())
                if p.offset >= 0
            }
            for (topic, partition), offset in out.positions.items():
                current[(topic, partition)] = TopicPartition(topic, partition, offset)
            positions = list(current.values())
            self.producer.poll(0)
            if self._cluster_lost:  # lost during this batch: do not commit through a stale client
                self._recover(None, replace=True)
                return
            if positions:
                group = self.consumer.consumer_group_metadata()
                self._call(
                    "send_offsets_to_transaction",
                    lambda t: self.producer.send_offsets_to_transaction(positions, group, t),
                )
            self._call("commit_transaction", lambda t: self.producer.commit_transaction(t))
            self._failures = 0
            metrics.TXN_COMMIT_SECONDS.labels(self.service).observe(time.monotonic() - started)
            metrics.TXN_RECORDS.labels(self.service, "in").inc(len(records))
            metrics.TXN_RECORDS.labels(self.service, "out").inc(out.count)
        except KafkaException as exc:
            self._recover(kafka_error(exc))

    def _call(self, what: str, call: Callable[[float], None], budget_s: float = CALL_BUDGET_S) -> None:
        """A blocking transaction call: repeated on retriable errors, watched for hangs."""
        with self.guard.watching(what):
            retrying(call, budget_s=budget_s, what=what, service=self.service)

    def _recover(self, error: KafkaError | None, *, replace: bool = False) -> None:
        self._failures += 1
        metrics.TXN_ABORTS.labels(self.service).inc()
        with contextlib.suppress(KafkaException, RuntimeError):
            self.producer.poll(0)  # serve error callbacks: an abort through a stale client can hang
        stale = replace or self._cluster_lost
        action = Action.NEW_PRODUCER if stale else classify(error)
        log.warning(
            "transaction failed; aborting and rewinding",
            extra={"service": self.service, "error": str(error), "action": action.value},
        )
        if action is Action.NEW_PRODUCER:
            self._replace_producer("the producer lost its broker connections" if stale else "fatal error")
        else:  # abortable, or retriable with its budget spent
            try:
                # Short budget: a new producer (whose init aborts what is open) is always a way out.
                self._call("abort_transaction", lambda t: self.producer.abort_transaction(t), ABORT_BUDGET_S)
            except KafkaException as abort_exc:
                log.error(
                    "abort failed; recreating producer",
                    extra={"service": self.service, "error": str(abort_exc)},
                )
                self._replace_producer("abort failed")
        self._rewind()
        self.processor.on_abort()
        time.sleep(min(5.0, 0.1 * 2 ** min(self._failures, 6)))  # back off a failing broker

    def _replace_producer(self, why: str) -> None:
        """A new producer with the same transactional id: its init fences (and aborts) whatever
        the old one left open, so the old one's queue is purged, not flushed."""
        log.warning("replacing the transactional producer", extra={"service": self.service, "why": why})
        metrics.TXN_PRODUCER_REPLACED.labels(self.service).inc()
        with contextlib.suppress(KafkaException, RuntimeError):
            self.producer.purge()
        self.producer = self._new_producer()

    def _rewind(self) -> None:
        """Seek back to the committed offsets: the aborted batch is read again. Until that worked
        the loop must not read on (it would skip the aborted records), so it is retried."""
        assignment = self.consumer.assignment()
        if not assignment:
            return

        def committed(timeout: float) -> list[TopicPartition]:
            return list(self.consumer.committed(assignment, timeout=timeout))

        for tp in retrying(committed, budget_s=REWIND_BUDGET_S, what="committed", service=self.service):
            target = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, target))
            except KafkaException as exc:
                log.warning(
                    "seek failed", extra={"partition": f"{tp.topic}[{tp.partition}]", "error": str(exc)}
                )

    def close(self) -> None:
        self.guard.close()
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", extra={"error": str(exc)})
        self.producer.flush(10)


def _is_benign_error(msg: Message) -> bool:
    err = msg.error()
    if err is None:
        return False
    if err.code() == KafkaError._PARTITION_EOF:
        return True
    if err.fatal() or err.code() == KafkaError._FATAL:  # the consumer is unusable: stop, loudly
        raise KafkaException(err)
    log.warning("consumer error", extra={"error": str(err)})
    return True
