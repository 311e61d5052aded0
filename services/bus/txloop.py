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

A processor that raises never ends the thread. What it raises in ``process`` (or a record Kafka
refuses) is blamed on the batch: the batch is aborted and read again, and once the same batch has
failed ``SWITCHYARD_POISON_AFTER_FAILURES`` times it is bisected down to the record that fails,
which is dead-lettered (``poison_record``) while the others go through (:mod:`services.bus.poison`).
Failures of the infrastructure never lead there. What ``tick`` raises is the processor's own
fault: abort, rewind, roll back, go on.

The loop reports its commit progress per partition (:mod:`services.observability.progress`), so
``/readyz`` fails when a partition with records makes no progress for ``SWITCHYARD_STALL_AFTER_S``.

The loop knows nothing of workflows: processors own the semantics.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypedDict

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from services.bus.clients import ClientConfig, consumer_config, headers_for, transactional_producer_config
from services.bus.connection_loss import makes_producer_stale
from services.bus.consumer import PauseAwareConsumer
from services.bus.fetch import consume_ready
from services.bus.poison import (
    POISON_KIND,
    Bisection,
    FailureCounter,
    RecordFault,
    batch_key,
    blames_records,
    describe,
    fed_positions,
    key_of,
    offset_of,
)
from services.bus.record_budget import RecordTooLarge, producible_limit, record_size
from services.bus.topics import Topics
from services.bus.txn_guard import Action, HangGuard, classify, kafka_error, retrying
from services.config import KAFKA_MESSAGE_MAX_BYTES, Settings
from services.contracts.dead_letters import bounded_identity, encode_dead_letter
from services.observability import metrics
from services.observability.progress import BOARD, PartitionProgress, ProgressBoard

log = logging.getLogger(__name__)

CALL_BUDGET_S = 30.0  # one transactional call, retries included
ABORT_BUDGET_S = 10.0  # abort_transaction, before falling back to a new producer
REWIND_BUDGET_S = 120.0  # reading committed offsets back after an abort
INIT_BUDGET_S = 120.0  # init_transactions of a new producer (the broker may be restarting)
#: ``send_offsets_to_transaction`` runs on a helper thread: librdkafka #5511 can block it past its
#: timeout. Still running this long (its budget spent), or this long after the clients reported
#: the connection lost, the loop abandons the producer to that thread and goes on with a new one.
OFFSETS_ABANDON_S = CALL_BUDGET_S + 5
OFFSETS_ABANDON_LOST_S = 2.0
#: Abandoned calls still blocked (each holds its producer and a thread): past this many the client
#: is wedged for good, and the process exits for its supervisor to restart it (the hang guard's way).
MAX_ABANDONED_CALLS = 4
OFFSETS_POLL_S = 0.2  # how often the loop serves the producer's error reports while it waits
CLUSTER_SIZE_TIMEOUT_S = 5.0  # the metadata request that counts the brokers, once per loop
OBSERVE_INTERVAL_S = 1.0  # consumer positions against cached watermarks, for the stall detector


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
        while True:
            try:
                if partition is None:
                    self._producer.produce(topic, key=key, value=value, headers=headers)
                else:
                    self._producer.produce(topic, key=key, value=value, headers=headers, partition=partition)
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
    # the wait for input while the processor has work completing in the background;
    # ``poison(msg, out, error_kind, message)`` dead-letters a record the poison-batch guard
    # isolated (in a transaction of its own; without it, or if it raises, the loop writes a
    # bounded DeadLetter with error_kind ``poison_record`` itself); ``on_committed()`` is called
    # after each commit (a processor keeping undo state for ``on_abort`` drops it then).


class _TickFault(Exception):
    """``tick`` raised: the processor's fault, not any input record's (nothing to bisect)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(describe(cause))
        self.cause = cause


class TransactionalLoop:
    """One consume → process → commit loop. ``consumer_factory``, ``producer_factory``, ``clock``,
    ``sleep`` and ``progress`` are seams for tests (fake clients, no broker); production uses the
    defaults."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: str,
        group_id: str,
        transactional_id: str,
        subscribe: list[str],
        processor: Processor,
        consumer_overrides: ClientConfig | None = None,
        consumer_factory: Callable[[ClientConfig], PauseAwareConsumer] = PauseAwareConsumer,
        producer_factory: Callable[[ClientConfig], Producer] = Producer,
        progress: ProgressBoard | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.service = service
        self.processor = processor
        self.transactional_id = transactional_id
        self.topics = Topics(settings.topic_prefix)
        self._producer_factory = producer_factory
        self._clock = clock
        self._sleep = sleep
        self._cluster_lost = False  # set by the producer's and the consumer's error callbacks
        self._brokers = 0  # counted once the first producer is up (services/bus/connection_loss.py)
        # The consumer's lost connections count too: after a broker restart a producer may report
        # nothing (fault suite, 2 of 4 runs: router core and executor blocked 180 s in
        # send_offsets_to_transaction, librdkafka #5511) while its loop's consumer, fetching all
        # along, reports the disconnect.
        self.consumer = consumer_factory(
            consumer_config(
                settings, group_id, **{"error_cb": self._on_consumer_error, **(consumer_overrides or {})}
            )
        )
        self.producer = self._new_producer()
        self.guard = HangGuard(service, overdue_after_s=CALL_BUDGET_S + 5)
        self._offsets_worker = _offsets_worker(service)
        self._abandoned: list[concurrent.futures.Future[None]] = []
        bind = getattr(processor, "bind", None)
        if bind is not None:
            bind(self.consumer)
        self._on_committed: Callable[[], None] = getattr(processor, "on_committed", None) or (lambda: None)
        self.subscribe = subscribe
        self.assigned: set[tuple[str, int]] = set()
        self.ready = threading.Event()
        self._failures = 0
        self.poison = FailureCounter(settings.poison_after_failures)
        self._board = progress if progress is not None else BOARD
        self.progress = self._board.register(PartitionProgress(service, settings.stall_after_s, clock))
        self._observed_at = float("-inf")

    def _new_producer(self) -> Producer:
        # Cleared before init: what the new producer reports while it initialises (the broker still
        # coming back) marks it stale again, and it is replaced at the next boundary (see
        # _on_producer_error for the narrower rule that was tried and undone).
        self._cluster_lost = False
        producer = self._producer_factory(
            transactional_producer_config(
                self.settings, self.transactional_id, error_cb=self._on_producer_error
            )
        )
        retrying(
            producer.init_transactions, budget_s=INIT_BUDGET_S, what="init_transactions", service=self.service
        )
        if self._brokers == 0:
            self._brokers = self._count_brokers(producer)
        return producer

    def _count_brokers(self, producer: Producer) -> int:
        """How many brokers the cluster has (0: not known, and the one-broker rule applies), for
        :func:`services.bus.connection_loss.makes_producer_stale`."""
        try:
            # One topic that always exists, not the whole cluster's metadata (a full refresh makes
            # librdkafka decommission brokers missing from it: the path of librdkafka #5511).
            metadata = producer.list_topics(self.topics.dlq, timeout=CLUSTER_SIZE_TIMEOUT_S)
            brokers = len(metadata.brokers)
        except KafkaException as exc:
            log.warning("could not count the brokers", extra={"service": self.service, "error": str(exc)})
            return 0
        log.info("cluster size", extra={"service": self.service, "brokers": brokers})
        return brokers

    def _on_producer_error(self, error: KafkaError) -> None:
        """Served by the producer's polls. A lost connection that
        :func:`~services.bus.connection_loss.makes_producer_stale` counts marks the producer stale:
        after a broker restart librdkafka may keep a dead coordinator handle cached and block
        ``send_offsets_to_transaction`` past its timeout (librdkafka #5511), so the loop replaces
        the producer at the next transaction boundary instead of calling it. On one broker any lost
        connection counts; on a cluster only a coordinator's or all brokers' (known issue 5 in
        tests/faults/README.md: replacing every producer whenever one node went stalled the
        engine). Tried and undone in an earlier session: ``_ALL_BROKERS_DOWN`` only on one broker
        too — an executor then blocked 180 s in ``send_offsets_to_transaction`` in the
        broker-restart scenario."""
        lost = makes_producer_stale(error, self._brokers)
        if lost and self._cluster_lost:
            log.debug("producer error", extra={"service": self.service, "error": str(error)})
            return  # already marked stale: one warning per outage is enough
        self._cluster_lost = self._cluster_lost or lost
        log.warning(
            "producer error", extra={"service": self.service, "error": str(error), "replaces_producer": lost}
        )

    def _on_consumer_error(self, error: KafkaError) -> None:
        """Served by ``consume()``: the same rule as :meth:`_on_producer_error` (the producer is
        replaced at the next transaction boundary, or instead of the commit)."""
        if makes_producer_stale(error, self._brokers):
            if not self._cluster_lost:
                log.warning(
                    "consumer lost its broker connection",
                    extra={"service": self.service, "error": str(error)},
                )
            self._cluster_lost = True
        else:
            log.warning("consumer error", extra={"service": self.service, "error": str(error)})

    # --- rebalance callbacks (run inside consume()) -------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.monotonic()
        self.processor.on_assigned(partitions)
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.consumer.forget_paused(partitions)
        self.progress.assigned((p.topic, p.partition) for p in partitions)
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
        self._forget(partitions)
        log.info("partitions revoked", extra={"service": self.service, "count": len(partitions)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.processor.on_revoked(partitions)
        self._forget(partitions)
        log.warning("partitions lost", extra={"service": self.service, "count": len(partitions)})

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self.assigned.difference_update((p.topic, p.partition) for p in partitions)
        self.consumer.forget_paused(partitions)
        self.progress.revoked((p.topic, p.partition) for p in partitions)

    # --- main loop --------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.start()
        timeout = self.settings.commit_interval_ms / 1000
        hint = getattr(self.processor, "poll_timeout", None)
        try:
            while not stop.is_set():
                wanted = hint() if hint is not None else None
                self.run_once(timeout if wanted is None else wanted)
        finally:
            self.close()

    def start(self) -> None:
        """Subscribe (partitions are assigned inside the first ``consume``)."""
        self.consumer.subscribe(
            self.subscribe, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def run_once(self, timeout: float) -> None:
        """One iteration: take a batch (waiting at most ``timeout`` for its first record) and run
        its transaction."""
        self._transaction(self._next_batch(timeout))

    def _next_batch(self, timeout: float) -> list[Message]:
        """Wait up to ``timeout`` for the first record only, then take whatever else is already
        fetched (up to ``max_batch``). ``consume(max_batch, timeout)`` would wait the whole timeout
        unless a full batch arrived, adding the commit interval to every hop under light load."""
        return consume_ready(self.consumer, self.settings.max_batch, timeout)

    def _transaction(self, messages: list[Message]) -> None:
        records = [m for m in messages if not _is_benign_error(m)]
        if records:
            self.progress.taking(records)
        started = time.monotonic()
        self._refresh_producer()
        out = self._outbox()
        try:
            self.producer.begin_transaction()
            if records:
                self._process(records, out)
            self._tick(out)
            if not records and out.count == 0:
                self.producer.abort_transaction(CALL_BUDGET_S)  # nothing happened: no round trip
                self._observe(out.positions)
                return
            current = {
                (p.topic, p.partition): p
                for p in self.consumer.position(self.consumer.assignment())
                if p.offset >= 0
            }
            for (topic, partition), offset in out.positions.items():
                current[(topic, partition)] = TopicPartition(topic, partition, offset)
            if not self._commit(list(current.values())):
                return
        except RecordFault as fault:
            self._record_failure(records, fault.cause, None)
            return
        except _TickFault as fault:
            self._processor_failure("tick", fault.cause)
            return
        except KafkaException as exc:
            error = kafka_error(exc)
            if records and blames_records(error):
                self._record_failure(records, exc, error)
            else:
                self._recover(error)
            return
        self._failures = 0
        self._on_committed()
        self.poison.reset()
        metrics.TXN_COMMIT_SECONDS.labels(self.service).observe(time.monotonic() - started)
        metrics.TXN_RECORDS.labels(self.service, "in").inc(len(records))
        metrics.TXN_RECORDS.labels(self.service, "out").inc(out.count)
        self.progress.committed({key: tp.offset for key, tp in current.items()})
        self._observe(out.positions)

    def _outbox(self) -> Outbox:
        # Built per transaction: after a producer replacement it must hold the new producer.
        return Outbox(self.producer, producible_limit(self.settings.message_max_bytes))

    def _refresh_producer(self) -> None:
        self.producer.poll(0)  # serve error callbacks: did the producer lose the cluster?
        if self._cluster_lost:
            self._replace_producer("the producer lost its broker connections")

    def _process(self, records: Sequence[Message], out: Outbox) -> None:
        """``processor.process``; what it raises is the records' doing unless Kafka says otherwise."""
        _blaming_records(self.processor.process, records, out)

    def _tick(self, out: Outbox) -> None:
        try:
            self.processor.tick(out)
        except KafkaException as exc:
            if blames_records(kafka_error(exc)):
                raise _TickFault(exc) from exc
            raise
        except Exception as exc:
            raise _TickFault(exc) from exc

    def _commit(self, positions: list[TopicPartition]) -> bool:
        """Send the offsets and commit. False: the producer lost the cluster during the batch, and
        the transaction was given up without calling it (the loop has recovered)."""
        self.producer.poll(0)
        if self._cluster_lost:  # lost during this batch: do not commit through a stale client
            self._recover(None, replace=True)
            return False
        if positions and not self._send_offsets(positions):
            self._recover(None, replace=True)  # a new producer's init aborts what the old one left
            return False
        self._call("commit_transaction", lambda t: self.producer.commit_transaction(t))
        return True

    def _send_offsets(self, positions: list[TopicPartition]) -> bool:
        """``send_offsets_to_transaction`` on the helper thread, the loop serving the producer's
        error reports meanwhile (its reports wait for a poll, and the loop is their only poller).
        False: the call hangs (librdkafka #5511: a dead coordinator handle, the call's timeout
        ignored) and the producer is given up to it. Safe: nothing is committed before
        ``commit_transaction``, and the new producer's ``init_transactions`` fences the old epoch
        and aborts its transaction. What the call raises propagates as before."""
        producer = self.producer
        group = self.consumer.consumer_group_metadata()
        future = self._offsets_worker.submit(
            retrying,
            lambda t: producer.send_offsets_to_transaction(positions, group, t),
            budget_s=CALL_BUDGET_S,
            what="send_offsets_to_transaction",
            service=self.service,
        )
        started = time.monotonic()
        while True:
            try:
                future.result(timeout=OFFSETS_POLL_S)
                return True
            except concurrent.futures.TimeoutError:
                pass
            with contextlib.suppress(KafkaException, RuntimeError):
                producer.poll(0)
            waited = time.monotonic() - started
            if waited >= OFFSETS_ABANDON_S or (self._cluster_lost and waited >= OFFSETS_ABANDON_LOST_S):
                break
        log.error(
            "send_offsets_to_transaction has not returned; abandoning the producer (librdkafka #5511)",
            extra={"service": self.service, "blocked_s": round(waited, 1), "lost": self._cluster_lost},
        )
        metrics.TXN_OVERDUE_CALLS.labels(self.service, "send_offsets_to_transaction").inc()
        self._offsets_worker.shutdown(wait=False)  # its thread stays with the hung call
        self._offsets_worker = _offsets_worker(self.service)
        self._abandoned = [call for call in self._abandoned if not call.done()] + [future]
        if len(self._abandoned) > MAX_ABANDONED_CALLS:
            self.guard.give_up(
                "send_offsets_to_transaction", f"{len(self._abandoned)} abandoned calls still blocked"
            )
        return False

    def _call(self, what: str, call: Callable[[float], None], budget_s: float = CALL_BUDGET_S) -> None:
        """A blocking transaction call: repeated on retriable errors, watched for hangs."""
        with self.guard.watching(what):
            retrying(call, budget_s=budget_s, what=what, service=self.service)

    # --- progress (services.observability.progress) -----------------------------------------
    def _observe(self, held: Mapping[tuple[str, int], int]) -> None:
        """After an iteration that went through: partitions the processor positioned itself, and
        (at most once per ``OBSERVE_INTERVAL_S``) consumer positions against the cached high
        watermarks: local calls, no broker round trip."""
        if held:
            self.progress.held(held)
        now = self._clock()
        if now - self._observed_at < OBSERVE_INTERVAL_S:
            return
        self._observed_at = now
        try:
            assignment = self.consumer.assignment()
            positions = {(p.topic, p.partition): p.offset for p in self.consumer.position(assignment)}
        except KafkaException as exc:  # an observation missed is no reason to stop the loop
            log.debug("progress observation failed", extra={"service": self.service, "error": str(exc)})
            return
        ends: dict[tuple[str, int], int] = {}
        for tp in assignment:
            with contextlib.suppress(KafkaException):
                ends[(tp.topic, tp.partition)] = self.consumer.get_watermark_offsets(tp, cached=True)[1]
        self.progress.observe(positions, ends, self.consumer.paused_partitions())

    # --- failures -------------------------------------------------------------------------------
    def _processor_failure(self, stage: str, cause: BaseException) -> None:
        """``tick`` raised: abort, rewind and let the processor roll back; the thread goes on."""
        metrics.PROCESSOR_ERRORS.labels(self.service, stage).inc()
        log.error(
            "processor raised; aborting the transaction",
            extra={"service": self.service, "stage": stage, "error": describe(cause)},
            exc_info=cause,
        )
        self._recover(None)

    def _record_failure(
        self, records: Sequence[Message], cause: BaseException, error: KafkaError | None
    ) -> None:
        """The batch failed by its records' doing: abort and retry it, and after
        ``poison_after_failures`` failures of the same batch, bisect it (services.bus.poison)."""
        if not isinstance(cause, KafkaException):
            metrics.PROCESSOR_ERRORS.labels(self.service, "process").inc()
        bisect = self.poison.failed(records)
        log.warning(
            "batch failed because of its records",
            extra={
                "service": self.service,
                "batch": _describe_batch(records),
                "records": len(records),
                "failures": self.poison.count,
                "bisect_after": self.poison.threshold,
                "error": describe(cause),
            },
            exc_info=cause if error is None else None,
        )
        if not bisect:
            self._recover(error)
            return
        self._abort(error)
        self.processor.on_abort()
        self._bisect(records, cause)

    def _bisect(self, records: Sequence[Message], cause: BaseException) -> None:
        plan = Bisection(records)
        log.warning(
            "bisecting a batch that keeps failing",
            extra={"service": self.service, "batch": _describe_batch(records), "records": len(records)},
        )
        while not plan.done:
            poison = plan.known_poison()
            if poison is None:
                window = plan.next_window()
                metrics.BISECTION_STEPS.labels(self.service).inc()
                self.progress.taking(window)
                outcome = self._step(functools.partial(self._process, window), fed=fed_positions(window))
                if outcome is None:
                    return  # the infrastructure failed: recovered (and rewound) the usual way
                if isinstance(outcome, dict):
                    plan.succeeded(window, outcome)
                    continue
                cause = outcome
                poison = plan.failed(window)
                if poison is None:
                    continue
            done = self._dead_letter(poison, cause)
            if done is None:
                return  # the infrastructure failed: recovered (and rewound) the usual way
            if not done:
                break  # not even its dead letter could be committed: it is read again later
            plan.poisoned(poison)
        self._end_bisection(plan)

    def _step(
        self,
        build: Callable[[Outbox], None],
        *,
        fed: Mapping[tuple[str, int], int] | None = None,
        fixed: Mapping[tuple[str, int], int] | None = None,
    ) -> dict[tuple[str, int], int] | BaseException | None:
        """One transaction of the bisection: ``build`` writes into the outbox; the positions
        committed are ``fed`` (the records handed over), what the processor set, then ``fixed``.

        Returns the committed positions; or the cause of a failure that is the records' doing
        (aborted, and the processor rolled back); or None after an infrastructure failure, which
        was recovered the usual way (abort or new producer, rewind, ``on_abort``)."""
        self._refresh_producer()
        out = self._outbox()
        try:
            self.producer.begin_transaction()
            build(out)
            positions = {**(fed or {}), **out.positions, **(fixed or {})}
            if not self._commit([TopicPartition(t, p, o) for (t, p), o in positions.items()]):
                return None
        except RecordFault as fault:
            self._abort(None)
            self.processor.on_abort()
            return fault.cause
        except KafkaException as exc:
            error = kafka_error(exc)
            if not blames_records(error):
                self._recover(error)
                return None
            self._abort(error)
            self.processor.on_abort()
            return exc
        self._failures = 0
        self._on_committed()
        metrics.TXN_RECORDS.labels(self.service, "out").inc(out.count)
        self.progress.committed(positions)
        return positions

    def _dead_letter(self, msg: Message, cause: BaseException) -> bool | None:
        """Dead-letter the poison record and commit past it, in a transaction of its own: through
        the processor's ``poison`` hook if it has one, else (or if the hook fails) the loop writes
        a bounded ``DeadLetter`` itself. True when committed; None after an infrastructure failure
        (recovered and rewound); False if not even the loop's own dead letter could be committed."""
        text = describe(cause)
        key = key_of(msg)
        past = {key: offset_of(msg) + 1}
        hook: Callable[[Message, Outbox, str, str], None] | None = getattr(self.processor, "poison", None)
        if hook is not None:

            def through_hook(out: Outbox, hook: Callable[[Message, Outbox, str, str], None] = hook) -> None:
                _blaming_records(hook, msg, out, POISON_KIND, text)

            outcome = self._step(through_hook, fixed=past)
            if isinstance(outcome, dict):
                self._poisoned(msg, text, by_processor=True)
                return True
            if outcome is None:
                return None
            metrics.PROCESSOR_ERRORS.labels(self.service, "poison").inc()
            log.error(
                "the processor's poison hook failed; the loop writes the dead letter itself",
                extra={"service": self.service, "error": describe(outcome)},
                exc_info=outcome,
            )
        outcome = self._step(
            lambda out: _blaming_records(self._write_dead_letter, msg, out, text), fixed=past
        )
        if isinstance(outcome, dict):
            self._poisoned(msg, text, by_processor=False)
            return True
        if outcome is None:
            return None
        log.critical(
            "the dead letter of a poison record could not be committed",
            extra={**_where(msg), "service": self.service, "error": describe(outcome)},
        )
        self._sleep(5.0)
        return False

    def _write_dead_letter(self, msg: Message, out: Outbox, text: str) -> None:
        tenant, run_id, correlation_id = bounded_identity(*_identity(msg, self.topics))
        value = encode_dead_letter(
            self.service,
            POISON_KIND,
            text,
            int(time.time() * 1000),
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
            key=msg.key(),
            value=msg.value(),
            tenant=tenant,
            correlation_id=correlation_id,
            run_id=run_id,
            max_bytes=out.max_record_bytes,
        )
        out.send(self.topics.dlq, value, key=tenant, headers=headers_for(tenant, run_id, correlation_id))

    def _poisoned(self, msg: Message, text: str, *, by_processor: bool) -> None:
        metrics.POISON_RECORDS.labels(self.service).inc()
        tenant, run_id, correlation_id = bounded_identity(*_identity(msg, self.topics))
        if not by_processor:
            metrics.DLQ_RECORDS.labels(self.service, POISON_KIND, tenant or "").inc()
        log.error(
            "poison record dead-lettered",
            extra={
                **_where(msg),
                "service": self.service,
                "tenant": tenant,
                "run_id": run_id,
                "correlation_id": correlation_id,
                "error_kind": POISON_KIND,
                "error": text,
                "dead_letter_by": "processor" if by_processor else "loop",
            },
        )

    def _end_bisection(self, plan: Bisection) -> None:
        """Put the consumer where the commits of the bisection left each partition. If the
        processor held partitions (their records were not all fed), its memory may run ahead of
        that position: it is rolled back too, as after an abort."""
        if plan.held:
            self.processor.on_abort()
        try:
            for (topic, partition), offset in plan.committed.items():
                self.consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.warning("seek after bisection failed", extra={"service": self.service, "error": str(exc)})
            self._rewind()
        self.poison.reset()

    def _recover(self, error: KafkaError | None, *, replace: bool = False) -> None:
        """Abort (or replace the producer), rewind to the committed offsets, let the processor roll
        back, back off."""
        self._failures += 1
        self._abort(error, replace=replace)
        self._rewind()
        self.processor.on_abort()
        self._sleep(min(5.0, 0.1 * 2 ** min(self._failures, 6)))  # back off a failing broker

    def _abort(self, error: KafkaError | None, *, replace: bool = False) -> None:
        metrics.TXN_ABORTS.labels(self.service).inc()
        with contextlib.suppress(KafkaException, RuntimeError):
            self.producer.poll(0)  # serve error callbacks: an abort through a stale client can hang
        stale = replace or self._cluster_lost
        action = Action.NEW_PRODUCER if stale else classify(error)
        log.warning(
            "transaction failed; aborting",
            extra={"service": self.service, "error": str(error), "action": action.value},
        )
        if action is Action.NEW_PRODUCER:
            self._replace_producer("the producer lost its broker connections" if stale else "fatal error")
            return
        try:  # abortable, or retriable with its budget spent
            # Short budget: a new producer (whose init aborts what is open) is always a way out.
            self._call("abort_transaction", lambda t: self.producer.abort_transaction(t), ABORT_BUDGET_S)
        except KafkaException as abort_exc:
            log.error(
                "abort failed; recreating producer",
                extra={"service": self.service, "error": str(abort_exc)},
            )
            self._replace_producer("abort failed")

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

        offsets = retrying(
            committed, budget_s=REWIND_BUDGET_S, what="committed", service=self.service, any_error=True
        )
        for tp in offsets:
            target = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition, target))
            except KafkaException as exc:
                log.warning(
                    "seek failed", extra={"partition": f"{tp.topic}[{tp.partition}]", "error": str(exc)}
                )

    def close(self) -> None:
        self.guard.close()
        self._offsets_worker.shutdown(wait=False)
        self._board.unregister(self.progress)
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed", extra={"error": str(exc)})
        self.producer.flush(10)


def _blaming_records(call: Callable[..., None], *args: Any) -> None:
    """``call(*args)``, with what it raises turned into a :class:`RecordFault` unless it is a
    Kafka error about the cluster rather than a record."""
    try:
        call(*args)
    except KafkaException as exc:
        if blames_records(kafka_error(exc)):
            raise RecordFault(exc) from exc
        raise
    except Exception as exc:
        raise RecordFault(exc) from exc


class RecordPosition(TypedDict):
    """Where a record was read (``extra=`` of a log line about it)."""

    topic: str | None
    partition: int | None
    offset: int | None


def _where(msg: Message) -> RecordPosition:
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()}


def _describe_batch(records: Sequence[Message]) -> str:
    """Where a batch starts on each partition, for logs (the first few partitions)."""
    starts = batch_key(records)
    text = ", ".join(f"{topic}[{partition}]@{offset}" for topic, partition, offset in starts[:5])
    return text + (f" and {len(starts) - 5} more" if len(starts) > 5 else "")


def _identity(msg: Message, topics: Topics) -> tuple[str | None, str | None, str | None]:
    """Tenant, run id and correlation id of a record, as far as the bus knows them: the identity
    headers every engine record carries, or the tenant of a trigger topic."""
    found: dict[str, str] = {}
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    for name, value in pairs:
        if name in ("tenant", "run_id", "correlation_id") and value is not None and name not in found:
            found[name] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    tenant = found.get("tenant") or topics.tenant_of(msg.topic() or "")
    return tenant, found.get("run_id"), found.get("correlation_id")


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


def _offsets_worker(service: str) -> concurrent.futures.ThreadPoolExecutor:
    """The helper thread of :meth:`TransactionalLoop._send_offsets` (a new one after a hang)."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"{service}.offsets")
