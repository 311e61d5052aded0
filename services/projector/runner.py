"""The projector's Kafka loop: events and dead-letter topics → batches → one PostgreSQL transaction each.

Two consumers feed one loop: one subscribes to ``<prefix>.events`` (run history) in the group
``<group>``, the other to ``<prefix>.dlq`` (dead letters, including control commands refused
before they reached a run) in its own group ``<group>.dead-letters``. In one group, the
cooperative-sticky assignor balances the *total* partition count and could leave one instance
every history partition; in two, each topic is shared across the instances on its own. A batch
may mix records of both, and their rows and offsets commit in the same transaction (stored
under ``<group>`` for both topics).

Exactly-once into PostgreSQL without Kafka transactions: the consumer is a plain
``read_committed`` consumer (cooperative-sticky, no auto commit) and the *database* is the
offset store. On assignment, each partition is positioned at the ``next_offset`` stored in
``consumer_offsets`` (from the beginning when there is none: the database has nothing from it).
Each batch's rows and offsets commit together (see :mod:`services.projector.writer`), so a crash
at any instant either loses the whole batch (it is read again) or none of it, and re-reading
an already applied event changes nothing. Offsets are also committed to Kafka afterwards,
asynchronously and only for the benefit of lag tooling; they are never read back.

Batches adapt to the load (see :meth:`Projector.next_batch`): what the consumer has already
fetched fills a batch up to 5,000 records or 32 MiB, so a backlog is written in a few large
transactions; when idle, the first record to arrive is written at once. Several instances share
the partitions through the consumer group; a batch never writes records of a partition revoked
while it was gathered.

A database outage does not crash the loop: the batch is retried with backoff until it commits
or ``stop`` is set (then it is simply dropped: its offsets were not stored). A record cannot
cause that: decoding makes every value storable or rejects the record, and what the database
refuses all the same is rejected event by event (see :mod:`.writer`), so only the database
itself can hold a batch back. The loop reports its commit progress per partition
(:mod:`services.observability.progress`, service ``projector``): a partition with records and no
commit for ``SWITCHYARD_STALL_AFTER_S`` fails ``/readyz`` and counts in
``switchyard_partitions_stalled``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.bus.clients import consumer_config
from services.bus.topics import Topics
from services.config import Settings
from services.observability.progress import BOARD, PartitionProgress, ProgressBoard
from services.projector import metrics
from services.projector.db import make_engine, upgrade_database
from services.projector.dead_letter_store import decode_dead_letter
from services.projector.events import Coordinates, decode_event
from services.projector.writer import BatchResult, Item, PartitionKey, load_offsets, write_batch

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
# Bounds of one batch (one transaction): thousands of events amortise the per-transaction cost
# under load; the byte bound caps memory whatever the record sizes.
DEFAULT_MAX_RECORDS = 5000
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
OBSERVE_INTERVAL_S = 1.0  # consumer positions against cached watermarks, for the stall detector


_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = True


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a batch is decoded and written.

    A batch allocates a few objects per field of thousands of events, all alive until it is
    written: the collector's passes over them (each young-generation pass walks every object the
    batch holds, and the older generations' passes more) cost as much as the work itself. What a
    batch makes is freed by reference counting when it is done; the rare cycle waits for the next
    pass after the batch.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:  # several instances in one process: the last one out restores the collector
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def default_group_id(settings: Settings) -> str:
    return f"{settings.topic_prefix}.projector"


class Projector:
    """One projector instance. :meth:`run` blocks until ``stop`` is set, then closes cleanly."""

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        batch_size: int | None = None,
        max_batch_bytes: int = DEFAULT_MAX_BYTES,
        poll_timeout_s: float = 0.5,
        migrate: bool = True,
        dead_letters: bool = True,
        progress: ProgressBoard | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.database_url:
            raise RuntimeError(
                "No database configured: set DATABASE_URL, or run `switchyard dev up` "
                'and `eval "$(switchyard dev env)"`.'
            )
        self.settings = settings
        self.database_url = settings.database_url
        topics = Topics(settings.topic_prefix)
        self.topic = topics.events
        self.dlq_topic = topics.dlq
        self.control_topic = topics.control
        self.topics = [self.topic, self.dlq_topic] if dead_letters else [self.topic]
        self.dead_letters = dead_letters
        self.group_id = group_id or default_group_id(settings)
        self.dead_letters_group_id = (
            f"{self.group_id}.dead-letters"  # Kafka only: offsets stay under group_id
        )
        self.batch_size = batch_size or DEFAULT_MAX_RECORDS
        self.max_batch_bytes = max_batch_bytes
        self.poll_timeout_s = poll_timeout_s
        self.migrate = migrate
        self.engine: sa.Engine | None = None
        self._consumer: Consumer | None = None
        self._letters: Consumer | None = None
        self._stop = threading.Event()
        self._ready: threading.Event | None = None
        self._assigned: set[PartitionKey] = set()
        self._board = progress if progress is not None else BOARD
        self._clock = clock
        self.progress = PartitionProgress("projector", settings.stall_after_s, clock)
        self._observed_at = float("-inf")

    @property
    def assigned_partitions(self) -> frozenset[int]:
        """Partitions of the events topic this instance owns now."""
        return frozenset(p for t, p in self._assigned if t == self.topic)

    @property
    def assigned(self) -> frozenset[PartitionKey]:
        """(topic, partition) of every partition (events and dead letters) this instance owns now."""
        return frozenset(self._assigned)

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, ready: threading.Event | None = None) -> None:
        self._stop, self._ready = stop, ready
        if self.migrate:
            upgrade_database(self.database_url)
        engine = self.engine = make_engine(self.database_url)
        consumer = Consumer(consumer_config(self.settings, self.group_id))
        self._consumer = consumer
        self._board.register(self.progress)
        consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        letters: Consumer | None = None
        if self.dead_letters:
            letters = self._letters = Consumer(consumer_config(self.settings, self.dead_letters_group_id))
            letters.subscribe(
                [self.dlq_topic],
                on_assign=self._on_assign_letters,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
        log.info("projector started", extra={"topic": self.topic, "group_id": self.group_id})
        try:
            while not stop.is_set():
                messages = self.next_batch(consumer)
                if letters is not None:  # rare: never waited for, the events consumer waits
                    messages.extend(self.next_letters(letters))
                if not messages:
                    for partition in self.assigned_partitions:
                        metrics.LAG_SECONDS.labels(str(partition)).set(0)
                else:
                    self.process(consumer, messages)
                self.observe(consumer)
        finally:
            try:
                with contextlib.ExitStack() as closing:
                    closing.callback(consumer.close)
                    if letters is not None:
                        closing.callback(letters.close)
            finally:
                self._board.unregister(self.progress)
                engine.dispose()
                self._consumer = self._letters = None
                metrics.ASSIGNED_PARTITIONS.set(0)
                log.info("projector stopped", extra={"topic": self.topic, "group_id": self.group_id})

    # -- rebalancing -------------------------------------------------------------------------

    def _stored_offsets(self) -> dict[PartitionKey, int] | None:
        assert self.engine is not None
        backoff = 0.2
        while True:
            try:
                with self.engine.connect() as conn:
                    return {
                        (topic, partition): offset
                        for topic in self.topics
                        for partition, offset in load_offsets(conn, self.group_id, topic).items()
                    }
            except sa.exc.SQLAlchemyError:
                log.exception("cannot read stored offsets; retrying", extra={"topic": self.topic})
                if self._stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _on_assign(
        self, consumer: Consumer, partitions: list[TopicPartition], *, any_events: bool = True
    ) -> None:
        """Position ``partitions`` at their stored offsets; the first events assignment (even an
        empty one) makes the instance ready."""
        stored = self._stored_offsets() if partitions else {}
        for tp in partitions:
            tp.offset = (stored or {}).get((tp.topic, tp.partition), OFFSET_BEGINNING)
        consumer.incremental_assign(partitions)
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        self.progress.assigned((tp.topic, tp.partition) for tp in partitions)
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned_partitions))
        if partitions:
            log.info(
                "partitions assigned",
                extra={"positions": {f"{tp.topic}[{tp.partition}]": tp.offset for tp in partitions}},
            )
        if self._ready is not None and any_events:
            self._ready.set()

    def _on_assign_letters(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_assign(consumer, partitions, any_events=False)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        self.progress.revoked((tp.topic, tp.partition) for tp in partitions)
        for tp in partitions:
            self._assigned.discard((tp.topic, tp.partition))
            if tp.topic == self.topic:
                metrics.LAG_SECONDS.labels(str(tp.partition)).set(0)
        metrics.ASSIGNED_PARTITIONS.set(len(self.assigned_partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Nothing of these partitions is written after this: a batch being gathered drops their
        # records (see next_batch), and a batch being written never polls (no callback) meanwhile.
        self._forget(partitions)
        consumer.incremental_unassign(partitions)
        if partitions:
            log.info(
                "partitions revoked",
                extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]},
            )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        consumer.incremental_unassign(partitions)
        if partitions:
            log.warning(
                "partitions lost", extra={"partitions": [f"{tp.topic}[{tp.partition}]" for tp in partitions]}
            )

    # -- batches -----------------------------------------------------------------------------

    def next_batch(self, consumer: Consumer) -> list[Message]:
        """The next batch: what is already fetched, else the first record to arrive, plus the rest.

        Adaptive: under load the fetched backlog fills the batch (up to ``batch_size`` records
        or about ``max_batch_bytes``); when idle, the first record is written at once, with
        whatever came with it. Records of partitions revoked meanwhile (the rebalance callbacks
        run inside ``consume``) are dropped: their new owner reads them from the stored offsets.
        """
        batch = consumer.consume(num_messages=self.batch_size, timeout=0)
        if not batch:
            batch = consumer.consume(num_messages=1, timeout=self.poll_timeout_s)
        size = sum(len(m.value() or b"") for m in batch)
        while batch and len(batch) < self.batch_size and size < self.max_batch_bytes:
            more = consumer.consume(num_messages=self.batch_size - len(batch), timeout=0)
            if not more:
                break
            batch.extend(more)
            size += sum(len(m.value() or b"") for m in more)
        return [m for m in batch if m.error() is not None or (m.topic(), m.partition()) in self._assigned]

    def next_letters(self, letters: Consumer) -> list[Message]:
        """Dead letters already fetched (never waits), at most ``batch_size``, of owned partitions."""
        batch = letters.consume(num_messages=self.batch_size, timeout=0)
        return [m for m in batch if m.error() is not None or (m.topic(), m.partition()) in self._assigned]

    def process(self, consumer: Consumer, messages: Sequence[Message]) -> BatchResult | None:
        """Decode, write and account for one batch; returns None if ``stop`` interrupted retries."""
        with gc_paused():
            return self._process(consumer, messages)

    def _process(self, consumer: Consumer, messages: Sequence[Message]) -> BatchResult | None:
        items: list[Item] = []
        next_offsets: dict[PartitionKey, int] = {}
        for msg in messages:
            error = msg.error()
            if error is not None:
                self._consumer_error(error)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            if topic is None or partition is None or offset is None:
                continue
            where = Coordinates(topic, partition, offset)
            if topic == self.dlq_topic:
                items.append(decode_dead_letter(msg.value(), msg.key(), where, self.control_topic))
            else:
                items.append(decode_event(msg.value(), msg.key(), where))
            next_offsets[(topic, partition)] = max(next_offsets.get((topic, partition), 0), offset + 1)
        if not items:
            return None
        self.progress.taking(messages)
        result = self._write(items, next_offsets)
        if result is None:
            return None
        self.progress.committed(next_offsets)
        self._account(result, len(items))
        for owner, offsets in ((consumer, self._offsets_of(next_offsets, True)),
                               (self._letters, self._offsets_of(next_offsets, False))):  # fmt: skip
            if owner is None or not offsets:
                continue
            try:
                owner.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:  # informational only: the database holds the real offsets
                log.debug("kafka offset commit failed: %s", exc)
        return result

    def _offsets_of(self, next_offsets: dict[PartitionKey, int], events: bool) -> list[TopicPartition]:
        """The offsets of the events topic (``events``) or of the dead letters (not ``events``)."""
        return [TopicPartition(t, p, o) for (t, p), o in next_offsets.items() if (t == self.topic) == events]

    def observe(self, consumer: Consumer) -> None:
        """After an iteration that went through, at most once per ``OBSERVE_INTERVAL_S``: where the
        consumer stands against the cached high watermarks (local calls, no broker round trip)."""
        now = self._clock()
        if now - self._observed_at < OBSERVE_INTERVAL_S:
            return
        self._observed_at = now
        positions: dict[PartitionKey, int] = {}
        ends: dict[PartitionKey, int] = {}
        for each in (consumer, self._letters):
            if each is None:
                continue
            try:
                assignment = each.assignment()
                positions.update({(p.topic, p.partition): p.offset for p in each.position(assignment)})
            except KafkaException as exc:  # an observation missed is no reason to stop the loop
                log.debug("progress observation failed: %s", exc, extra={"topic": self.topic})
                return
            for tp in assignment:
                with contextlib.suppress(KafkaException):
                    ends[(tp.topic, tp.partition)] = each.get_watermark_offsets(tp, cached=True)[1]
        self.progress.observe(positions, ends, ())  # the projector never pauses a partition

    def _consumer_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer error: %s", error, extra={"topic": self.topic})

    def _write(self, items: list[Item], next_offsets: dict[PartitionKey, int]) -> BatchResult | None:
        assert self.engine is not None
        backoff = 0.2
        while True:
            started = time.perf_counter()
            try:
                result = write_batch(self.engine, self.group_id, items, next_offsets)
            except Exception:
                metrics.BATCH_RETRIES.inc()
                log.exception(
                    "batch of %d records not written; retrying", len(items), extra={"topic": self.topic}
                )
                if self._stop.wait(backoff):
                    return None
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
            metrics.BATCH_RECORDS.observe(len(items))
            return result

    def _account(self, result: BatchResult, records: int) -> None:
        now = time.time()
        newest: dict[int, float] = {}
        for ev in result.applied:
            metrics.EVENTS.labels(ev.tenant, "applied").inc()
            newest[ev.where.partition] = max(newest.get(ev.where.partition, 0.0), ev.at.timestamp())
            log.debug("event projected", extra=ev.log_ids(step_id=ev.step_id, state=ev.state))
        for ev in result.duplicates:
            metrics.EVENTS.labels(ev.tenant, "duplicate").inc()
        for dl in result.dead_letters:
            metrics.DEAD_LETTERS.labels(dl.error_kind).inc()
            log.debug("dead letter projected", extra=dl.log_ids())
        for partition, at in newest.items():
            metrics.LAG_SECONDS.labels(str(partition)).set(max(0.0, now - at))
        for reject in result.rejected:
            metrics.REJECTS.labels(reject.reason).inc()
            log.warning(
                "record rejected: %s: %s",
                reject.reason,
                reject.message,
                extra={
                    "tenant": reject.identity.get("tenant"),
                    "run_id": reject.identity.get("run_id"),
                    "correlation_id": reject.identity.get("correlation_id"),
                    "topic": reject.where.topic,
                    "partition": reject.where.partition,
                    "offset": reject.where.offset,
                    "reason": reject.reason,
                },
            )
        log.debug(
            "batch projected",
            extra={
                "records": records,
                "applied": len(result.applied),
                "duplicates": len(result.duplicates),
                "rejected": len(result.rejected),
                "dead_letters": len(result.dead_letters),
            },
        )


def run_projector(
    settings: Settings,
    stop: threading.Event,
    *,
    group_id: str | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Project ``<prefix>.events`` and ``<prefix>.dlq`` into ``settings.database_url`` until ``stop``.

    Migrates the database first (idempotent). ``ready`` is set once the consumer has its first
    assignment. Default group id: ``<prefix>.projector``.
    """
    from services.projector.tenant_mirror import run_tenant_mirror

    assert settings.database_url
    # Migrate before the tenant mirror starts: it writes the ``tenants`` table the migrations create.
    upgrade_database(settings.database_url)
    projector = Projector(settings, group_id=group_id, migrate=False)
    mirror = threading.Thread(
        target=run_tenant_mirror, args=(settings, stop), name="tenant-mirror", daemon=True
    )
    mirror.start()
    try:
        projector.run(stop, ready)
    finally:
        mirror.join(10)
