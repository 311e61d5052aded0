"""Reading owned partitions back from the router-state changelog (the run store's I/O edge).

The core calls :func:`read_changelog` from its loop, never from the rebalance callback: the
callback only notes the new partitions, and the first ``process`` or ``tick`` after it restores
them before any of their records is applied. The read has its own consumer (no group
membership: partitions are assigned by hand, read committed, from the beginning to the end seen
on assignment) and a deadline (``SWITCHYARD_RESTORE_DEADLINE_S``); past it, a
:class:`~confluent_kafka.KafkaException` of the infrastructure kind makes the loop abort, rewind
and try again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from services.bus.fetch import consume_ready
from services.bus.topics import Topics
from services.config import Settings
from services.router.bulk import collection_paused

#: Applies one record: partition, key, value (None: a tombstone).
Load = Callable[[int, bytes | None, bytes | None], None]


#: The broker holds an empty fetch (how the end of a partition is told) up to this long.
FETCH_WAIT_MS = 20
CONSUME_BATCH = 1000
#: How long one read waits for its first record (then it takes what is already fetched).
CONSUME_WAIT_S = 0.5


def read_changelog(settings: Settings, numbers: list[int], load: Load, deadline_s: float) -> None:
    """Feed every committed record of the changelog partitions ``numbers`` to ``load``, in order."""
    if not numbers:
        return
    consumer = Consumer(reader_config(settings, "router-restore"))
    try:
        with collection_paused():
            _read(consumer, Topics(settings.topic_prefix).router_state, numbers, load, deadline_s)
    finally:
        consumer.close()


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


def _read(consumer: Consumer, topic: str, numbers: list[int], load: Load, deadline_s: float) -> None:
    consumer.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in numbers])
    remaining = set(numbers)
    deadline = time.monotonic() + deadline_s
    while remaining and time.monotonic() < deadline:
        # librdkafka's batch consume returns early only when the batch is full: the read that met
        # the end of the partitions (a partial batch, then the end-of-partition events) waited
        # out its whole timeout.
        for msg in consume_ready(consumer, CONSUME_BATCH, CONSUME_WAIT_S):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    remaining.discard(msg.partition() or 0)
                continue
            load(msg.partition() or 0, msg.key(), msg.value())
    if remaining:
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                f"router state restore did not finish within {deadline_s:g} s for partitions"
                f" {sorted(remaining)}",
            )
        )
