"""Emitting to a tenant's trigger topic: Avro ``TriggerEvent`` records through an idempotent producer.

:class:`KafkaEmitter` is the ``emit`` a trigger instance receives: bound to one instance name and
one tenant, it produces to ``Topics(prefix).tenant_triggers(tenant)`` with the idempotency key as
the Kafka key, and waits for the broker's acknowledgement. :meth:`KafkaEmitter.recent_keys` reads
the topic back (``read_committed``, from the offsets of ``since`` to the current end) so that a
restarted trigger knows what it already emitted.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from services.bus import clients
from services.bus.fetch import consume_ready
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.triggers.plugins import Emission, EmitError

log = logging.getLogger("services.triggers")

DELIVERY_TIMEOUT_S = 30.0
SCAN_MARGIN_MS = 60_000  # producer clocks differ: scan a minute further back than asked


class KafkaEmitter:
    """``emit`` for one trigger instance of one tenant."""

    def __init__(
        self, settings: Settings, instance: str, tenant: str, producer: Producer | None = None
    ) -> None:
        self.settings = settings
        self.instance = instance
        self.tenant = tenant
        self.topic = Topics(settings.topic_prefix).tenant_triggers(tenant)
        self._producer = producer or Producer(clients.plain_producer_config(settings))

    def __call__(self, emission: Emission) -> None:
        occurred = emission.occurred_at
        record = {
            "event_type": emission.event_type,
            "data_json": json.dumps(emission.data, separators=(",", ":")),
            "idempotency_key": emission.idempotency_key,
            "correlation_id": emission.correlation_id,
            "occurred_at": int(occurred.timestamp() * 1000) if occurred is not None else None,
        }
        outcome: list[KafkaError | None] = []
        try:
            self._producer.produce(
                self.topic,
                serde.encode("TriggerEvent", record),
                key=emission.idempotency_key,
                headers=[("tenant", self.tenant.encode()), ("trigger", self.instance.encode())],
                on_delivery=lambda err, msg: outcome.append(err),
            )
        except (BufferError, KafkaException) as exc:
            raise EmitError(f"{self.topic}: {exc}") from exc
        self._producer.flush(DELIVERY_TIMEOUT_S)
        if not outcome:
            raise EmitError(f"{self.topic}: no acknowledgement within {DELIVERY_TIMEOUT_S}s")
        if outcome[0] is not None:
            raise EmitError(f"{self.topic}: {outcome[0]}")

    def recent_keys(self, prefix: str, since: datetime) -> set[str]:
        """Keys starting with ``prefix`` of the records written to the topic since ``since``.

        Raises :class:`EmitError` when the topic cannot be read (missing, no leader yet, …).
        """
        # assign() only, never commits: the group id is required by librdkafka but unused.
        consumer = Consumer(
            clients.consumer_config(self.settings, f"{self.settings.topic_prefix}.trigger-scan")
        )
        try:
            return self._scan(consumer, prefix, int(since.timestamp() * 1000) - SCAN_MARGIN_MS)
        except KafkaException as exc:  # e.g. no partition leader yet: the caller retries
            raise EmitError(f"cannot read {self.topic} back: {exc}") from exc
        finally:
            consumer.close()

    def _scan(self, consumer: Consumer, prefix: str, since_ms: int) -> set[str]:
        meta = consumer.list_topics(self.topic, timeout=15).topics.get(self.topic)
        if meta is None or meta.error is not None:
            raise EmitError(
                f"topic {self.topic} is missing: create the tenant first (switchyard tenant create)"
            )
        wanted = [TopicPartition(self.topic, p, since_ms) for p in meta.partitions]
        starts = consumer.offsets_for_times(wanted, timeout=15)
        ends: dict[int, int] = {}
        assign: list[TopicPartition] = []
        for tp in starts:
            _, high = consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=15)
            start = tp.offset if tp.offset >= 0 else high
            if start < high:
                ends[tp.partition] = high
                assign.append(TopicPartition(self.topic, tp.partition, start))
        keys: set[str] = set()
        if not assign:
            return keys
        consumer.assign(assign)
        deadline = time.monotonic() + 60
        while ends:
            if time.monotonic() > deadline:
                raise EmitError(f"could not read {self.topic} back within 60 s")
            for msg in consume_ready(consumer, 500, 0.5):
                if msg.error() is not None:
                    continue
                key = _text(msg.key())
                if key.startswith(prefix):
                    keys.add(key)
                partition, offset = msg.partition(), msg.offset()
                if partition is not None and offset is not None and offset + 1 >= ends.get(partition, 0):
                    ends.pop(partition, None)
            for tp in consumer.position([TopicPartition(self.topic, p) for p in list(ends)]):
                if tp.offset >= ends.get(tp.partition, 0):  # control records (transaction markers) at the end
                    ends.pop(tp.partition, None)
        return keys

    def close(self) -> None:
        self._producer.flush(DELIVERY_TIMEOUT_S)


def _text(key: Any) -> str:
    if key is None:
        return ""
    return key.decode(errors="replace") if isinstance(key, bytes) else str(key)
