"""Re-project the events and dead-letter topics from the start into a fresh PostgreSQL schema.

Used by ``switchyard audit rebuild`` (see :mod:`services.commands.audit` and :mod:`.compare`):

1. :func:`capture_end_offsets` — the end of every partition of both topics, *now* (read with
   ``read_committed``, so an open transaction's records are not counted as readable).
2. :func:`create_schema` — a new schema ``audit_rebuild_<utc timestamp>_<hex>``, migrated to head
   with the projector's own Alembic revisions (so it is exactly the live shape).
3. :func:`rebuild` — a plain consumer (no group membership, no committed offsets) assigned every
   partition from its first retained offset, feeding the *same* decode and write path as the live
   projector (:func:`~.writer.write_batch`) into the fresh schema, stopping each partition at its
   captured end. It returns the offset after the last *data* record read per partition (a
   transaction's commit marker takes an offset but is never delivered, so this may be below the
   captured end).
4. :func:`wait_for_live` — the live projector keeps running; the comparison is only fair once it
   has stored, in ``consumer_offsets``, a position at least that far on every partition.

If a partition's first retained offset is above 0 (retention deleted the oldest records), the
rebuild cannot reproduce what the live projector saw before then: :class:`EndOffsets` says so
(``truncated``) and the command warns.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from services.bus.clients import consumer_config
from services.bus.topics import Topics
from services.config import Settings
from services.projector.db import check_schema_name, upgrade_database
from services.projector.dead_letter_store import decode_dead_letter
from services.projector.events import Coordinates, decode_event
from services.projector.writer import Item, PartitionKey, load_offsets, write_batch

log = logging.getLogger(__name__)

REBUILD_CONSUMER = "audit-rebuild"
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EndOffsets:
    """First retained (``start``) and end offsets per partition, captured at one instant."""

    start: dict[PartitionKey, int]
    end: dict[PartitionKey, int]

    @property
    def total(self) -> int:
        """Offsets to read in all (an upper bound on records: commit markers take offsets too)."""
        return sum(max(0, self.end[tp] - self.start.get(tp, 0)) for tp in self.end)

    @property
    def truncated(self) -> dict[PartitionKey, int]:
        """Partitions whose oldest records were deleted by retention (their first retained offset)."""
        return {tp: s for tp, s in self.start.items() if s > 0}


@dataclass
class RebuildResult:
    """What :func:`rebuild` read: records, and the offset after the last data record per partition."""

    records: int = 0
    last_data: dict[PartitionKey, int] = field(default_factory=dict)


class LiveProjectorBehind(RuntimeError):
    """The live projector did not reach the captured offsets in time."""

    def __init__(self, behind: dict[PartitionKey, tuple[int, int]]) -> None:
        parts = ", ".join(f"{t}[{p}] at {have} < {need}" for (t, p), (have, need) in sorted(behind.items()))
        super().__init__(f"the live projector has not caught up: {parts}")
        self.behind = behind


def audit_topics(settings: Settings) -> tuple[str, str, str]:
    """(events, dlq, control) topic names."""
    topics = Topics(settings.topic_prefix)
    return topics.events, topics.dlq, topics.control


def _consumer(settings: Settings) -> Consumer:
    return Consumer(
        consumer_config(
            settings,
            f"{settings.topic_prefix}.{REBUILD_CONSUMER}-{uuid.uuid4().hex[:8]}",
            **{"enable.partition.eof": True},
        )
    )


def capture_end_offsets(settings: Settings, timeout_s: float = 30.0) -> EndOffsets:
    """The start and end offsets of every partition of the events and dlq topics (missing topics: none)."""
    consumer = _consumer(settings)
    start: dict[PartitionKey, int] = {}
    end: dict[PartitionKey, int] = {}
    try:
        for topic in audit_topics(settings)[:2]:
            metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if metadata is None or metadata.error is not None:
                log.warning("topic %s not found; nothing to rebuild from it", topic)
                continue
            for partition in sorted(metadata.partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout_s, cached=False
                )
                start[(topic, partition)], end[(topic, partition)] = int(low), int(high)
    finally:
        consumer.close()
    return EndOffsets(start, end)


def new_schema_name(now: datetime | None = None) -> str:
    """``audit_rebuild_<YYYYmmddHHMMSS>_<4 hex>`` (UTC)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    return f"audit_rebuild_{stamp}_{uuid.uuid4().hex[:4]}"


def create_schema(engine: sa.Engine, database_url: str, schema: str) -> None:
    """Create ``schema`` and migrate it to head (tables, indexes and its own ``alembic_version``)."""
    with engine.begin() as conn:
        conn.execute(sa.schema.CreateSchema(check_schema_name(schema)))
    upgrade_database(database_url, schema=schema)


def drop_schema(engine: sa.Engine, schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    with engine.begin() as conn:
        conn.execute(sa.schema.DropSchema(check_schema_name(schema), cascade=True, if_exists=True))


def _partition_error(error: KafkaError) -> None:
    if error.fatal():
        raise KafkaException(error)
    log.warning("consumer error during rebuild: %s", error)


def rebuild(
    settings: Settings,
    engine: sa.Engine,
    offsets: EndOffsets,
    *,
    batch_size: int = 500,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
    stall_timeout_s: float = 60.0,
) -> RebuildResult:
    """Project every record below the captured ends into ``engine`` (a schema-pinned engine).

    ``progress(read, total)`` is called after each batch (offsets read so far, offsets to read).
    Raises ``TimeoutError`` if no partition advances for ``stall_timeout_s``.
    """
    _, dlq_topic, control_topic = audit_topics(settings)
    pending = {tp for tp, e in offsets.end.items() if e > offsets.start.get(tp, 0)}
    position = {tp: offsets.start.get(tp, 0) for tp in offsets.end}
    result = RebuildResult()
    if not pending:
        if progress:
            progress(0, 0)
        return result
    consumer = _consumer(settings)
    consumer.assign([TopicPartition(t, p, position[(t, p)]) for t, p in sorted(pending)])
    last_progress = time.monotonic()

    def read_so_far() -> int:
        return sum(position[tp] - offsets.start.get(tp, 0) for tp in offsets.end)

    def finish(tp: PartitionKey) -> None:
        pending.discard(tp)
        position[tp] = max(position[tp], offsets.end[tp])
        consumer.pause([TopicPartition(*tp)])

    try:
        while pending:
            if stop is not None and stop.is_set():
                raise InterruptedError("rebuild interrupted")
            messages = consumer.consume(num_messages=batch_size, timeout=0.5)
            items: list[Item] = []
            next_offsets: dict[PartitionKey, int] = {}
            for msg in messages:
                if _done_or_error(msg, offsets, finish):
                    continue
                topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
                assert topic is not None and partition is not None and offset is not None
                tp = (topic, partition)
                if tp not in pending:
                    continue
                if offset >= offsets.end[tp]:
                    finish(tp)
                    continue
                where = Coordinates(topic, partition, offset)
                if topic == dlq_topic:
                    items.append(decode_dead_letter(msg.value(), msg.key(), where, control_topic))
                else:
                    items.append(decode_event(msg.value(), msg.key(), where))
                next_offsets[tp] = offset + 1
                position[tp] = offset + 1
                if offset + 1 >= offsets.end[tp]:
                    finish(tp)
            if items:
                write_batch(engine, REBUILD_CONSUMER, items, next_offsets)
                result.records += len(items)
                result.last_data.update(next_offsets)
                last_progress = time.monotonic()
            elif messages:
                last_progress = time.monotonic()
            for tp in list(pending):  # commit markers at the end are never delivered: ask the position
                (current,) = consumer.position([TopicPartition(*tp)])
                if current.offset >= offsets.end[tp]:
                    finish(tp)
            if progress:
                progress(read_so_far(), offsets.total)
            if pending and time.monotonic() - last_progress > stall_timeout_s:
                raise TimeoutError(
                    f"rebuild made no progress for {stall_timeout_s:.0f}s; still reading "
                    + ", ".join(f"{t}[{p}] at {position[(t, p)]}" for t, p in sorted(pending))
                )
    finally:
        consumer.close()
    return result


def _done_or_error(msg: Message, offsets: EndOffsets, finish: Callable[[PartitionKey], None]) -> bool:
    """Handle an end-of-partition or error pseudo-message; True when ``msg`` carries no record."""
    error = msg.error()
    if error is None:
        return False
    if error.code() == KafkaError._PARTITION_EOF:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is not None and partition is not None and offset is not None:
            tp = (topic, partition)
            if tp in offsets.end and offset >= offsets.end[tp]:
                finish(tp)
        return True
    _partition_error(error)
    return True


def live_positions(engine: sa.Engine, group_id: str, topics: list[str]) -> dict[PartitionKey, int]:
    """The live projector's stored next offsets (``consumer_offsets``) for ``topics``."""
    with engine.connect() as conn:
        return {
            (topic, partition): offset
            for topic in topics
            for partition, offset in load_offsets(conn, group_id, topic).items()
        }


def wait_for_live(
    engine: sa.Engine,
    group_id: str,
    needed: dict[PartitionKey, int],
    timeout_s: float,
    poll_s: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Wait until the live projector (``group_id``) has stored offsets >= ``needed`` everywhere."""
    topics = sorted({t for t, _ in needed})
    deadline = time.monotonic() + timeout_s
    while True:
        stored = live_positions(engine, group_id, topics)
        behind = {tp: (stored.get(tp, 0), n) for tp, n in needed.items() if stored.get(tp, 0) < n}
        if progress:
            progress(len(needed) - len(behind), len(needed))
        if not behind:
            return
        if time.monotonic() > deadline:
            raise LiveProjectorBehind(behind)
        time.sleep(poll_s)
