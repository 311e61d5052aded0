"""Reading owned partitions back from the router-state changelog (the run store's I/O edge).

The core calls :func:`read_changelog` from its loop, never from the rebalance callback: the
callback only notes the new partitions, and the first ``process`` or ``tick`` after it restores
them before any of their records is applied. The read has its own consumer (no group
membership: partitions are assigned by hand, read committed, from the beginning) and a deadline
(``SWITCHYARD_RESTORE_DEADLINE_S``); past it, a :class:`~confluent_kafka.KafkaException` of the
infrastructure kind makes the loop abort, rewind and try again.

The previous owner's last transaction may still be open when a partition moves: its offsets
were sent (so the group accepted them) but its coordinator had not answered the commit — a
router cut off from the group by a paused or slow broker goes on committing until it learns it
lost the partition. That transaction can still commit after the move. A restore that stopped at
the end a ``read_committed`` reader sees (the last stable offset, before the open transaction)
would miss its state while the partition's committed offsets, once it commits, include its
inputs: the new owner would then apply the next records to a stale run state and write history
with sequence numbers already taken (seen on a three-node cluster, 2026-12-01: 29 event ids
written twice with different content). So a restore first waits until the core group's
offsets for these partitions are stable (no transaction pending on them, KIP-447's
``require_stable``), then reads each changelog partition to its high watermark, not only to its
last stable offset: whatever transaction was open on it has then committed or aborted.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from services.bus.fetch import consume_ready
from services.bus.topics import Topics, admin_client
from services.config import Settings
from services.router.bulk import collection_paused

#: Applies one record: partition, key, value (None: a tombstone).
Load = Callable[[int, bytes | None, bytes | None], None]


#: The broker holds an empty fetch (how the end of a partition is told) up to this long.
FETCH_WAIT_MS = 20
CONSUME_BATCH = 1000
#: How long one read waits for its first record (then it takes what is already fetched).
CONSUME_WAIT_S = 0.5
#: One admin request's timeout (offsets of the group, high watermarks), and the pause between
#: two looks at offsets a transaction still holds.
ADMIN_TIMEOUT_S = 10.0
UNSTABLE_RETRY_S = 0.2
log = logging.getLogger(__name__)
T = TypeVar("T")


def read_changelog(settings: Settings, numbers: list[int], load: Load, deadline_s: float) -> None:
    """Feed every committed record of the changelog partitions ``numbers`` to ``load``, in order."""
    if not numbers:
        return
    topics = Topics(settings.topic_prefix)
    deadline = time.monotonic() + deadline_s
    admin = admin_client(settings)
    group = f"{settings.topic_prefix}.router.core"
    wait_for_stable_offsets(admin, group, topics.inbox, numbers, deadline, deadline_s)
    consumer = Consumer(reader_config(settings, "router-restore"))
    try:
        with collection_paused():
            _read(consumer, admin, topics.router_state, numbers, load, deadline, deadline_s)
    finally:
        consumer.close()


def _timed_out(what: str, deadline_s: float, partitions: list[int]) -> KafkaException:
    return KafkaException(
        KafkaError(
            KafkaError._TIMED_OUT,
            f"router state restore did not finish within {deadline_s:g} s for partitions "
            f"{sorted(partitions)}: {what}",
        )
    )


def wait_for_stable_offsets(
    admin: AdminClient, group: str, topic: str, numbers: list[int], deadline: float, deadline_s: float
) -> None:
    """Return once no transaction holds offsets of ``group`` on these partitions of ``topic``
    (the previous owner's last one has committed or aborted). ``KafkaException`` at ``deadline``."""
    request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, n) for n in numbers])]

    def unstable() -> bool:
        try:
            (future,) = admin.list_consumer_group_offsets(
                request, require_stable=True, request_timeout=ADMIN_TIMEOUT_S
            ).values()
            result = future.result(timeout=ADMIN_TIMEOUT_S + 5)
        except KafkaException as exc:
            if kafka_code(exc) == KafkaError.UNSTABLE_OFFSET_COMMIT:
                return True
            raise
        return any(
            tp.error is not None and tp.error.code() == KafkaError.UNSTABLE_OFFSET_COMMIT
            for tp in result.topic_partitions or []
        )

    waited_since: float | None = None
    while _until(deadline, deadline_s, numbers, "the group's offsets could not be read", unstable):
        if waited_since is None:
            waited_since = time.monotonic()
            log.warning(
                "a previous owner's transaction still holds offsets of these partitions; waiting",
                extra={"partitions": numbers},
            )
        if time.monotonic() > deadline:
            raise _timed_out("a previous owner's transaction did not end", deadline_s, numbers)
        time.sleep(UNSTABLE_RETRY_S)
    if waited_since is not None:
        log.info(
            "a previous owner's transaction ended; restoring",
            extra={"partitions": numbers, "waited_s": round(time.monotonic() - waited_since, 3)},
        )


def _until(deadline: float, deadline_s: float, numbers: list[int], what: str, call: Callable[[], T]) -> T:
    """``call``, repeated while the cluster answers with an error or not at all (a coordinator or
    leader moving), until ``deadline``: then a ``KafkaException`` the loop treats as the
    infrastructure's (abort, rewind, restore again), never as the records' fault."""
    while True:
        try:
            return call()
        except (KafkaException, concurrent.futures.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise _timed_out(f"{what} ({exc})", deadline_s, numbers) from exc
            log.info("restore: retrying", extra={"what": what, "error": str(exc)})
            time.sleep(UNSTABLE_RETRY_S)


def kafka_code(exc: KafkaException) -> int | None:
    error = exc.args[0] if exc.args else None
    return error.code() if isinstance(error, KafkaError) else None


def high_watermarks(admin: AdminClient, topic: str, numbers: list[int]) -> dict[int, int]:
    """The end of each partition counting records of open transactions (``read_uncommitted``)."""
    futures = admin.list_offsets(
        {TopicPartition(topic, n): OffsetSpec.latest() for n in numbers},  # type: ignore[no-untyped-call]
        isolation_level=IsolationLevel.READ_UNCOMMITTED,
        request_timeout=ADMIN_TIMEOUT_S,
    )
    return {tp.partition: future.result(timeout=ADMIN_TIMEOUT_S + 5).offset for tp, future in futures.items()}


def reader_config(settings: Settings, name: str) -> dict[str, Any]:
    """A changelog reader's client settings (the restore benchmark's floor reads with them too)."""
    conf = settings.kafka_config()
    conf.update(
        {
            "group.id": f"{settings.topic_prefix}.{name}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            # The end of a partition is told by an empty fetch, which the broker holds up to this
            # long (default 500 ms: half a second added to every restore).
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }
    )
    return conf


def _read(
    consumer: Consumer,
    admin: AdminClient,
    topic: str,
    numbers: list[int],
    load: Load,
    deadline: float,
    deadline_s: float,
) -> None:
    """Read each partition until a ``read_committed`` end that is also its high watermark (no
    transaction open on it any more): an end-of-partition short of it waits for the next one."""
    consumer.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in numbers])
    remaining = set(numbers)
    ends = _until(
        deadline,
        deadline_s,
        numbers,
        "the changelog's ends could not be read",
        lambda: high_watermarks(admin, topic, numbers),
    )
    warned: set[int] = set()
    while remaining and time.monotonic() < deadline:
        # librdkafka's batch consume returns early only when the batch is full: the read that met
        # the end of the partitions (a partial batch, then the end-of-partition events) waited
        # out its whole timeout.
        for msg in consume_ready(consumer, CONSUME_BATCH, CONSUME_WAIT_S):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    number = msg.partition() or 0
                    if (msg.offset() or 0) >= ends[number]:
                        remaining.discard(number)
                    elif number not in warned:
                        warned.add(number)
                        log.warning(
                            "a transaction is open on the router state changelog; restoring once it ends",
                            extra={"partition": number, "stable_end": msg.offset(), "end": ends[number]},
                        )
                continue
            load(msg.partition() or 0, msg.key(), msg.value())
    if remaining:
        raise _timed_out("an open transaction on the changelog did not end", deadline_s, sorted(remaining))
