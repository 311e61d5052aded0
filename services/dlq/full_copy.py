"""The whole original of a dead letter, read back from its record on the dead-letter topic.

The projector stores at most 64 KiB of a dead letter's original value (``dead_letters``); the
``DeadLetter`` record itself keeps up to 512 KiB, more than intake accepts for a trigger. A re-drive
of a trigger whose stored copy was cut reads that record (at ``kafka_topic``/``kafka_partition``/
``kafka_offset``), checks it is the same dead letter and that the copy is whole, and sends that.
Retention may have deleted the record: the re-drive is then refused with that reason.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException, TopicPartition

from services.config import Settings
from services.contracts.records import decode_dead_letter
from services.projector.models import DeadLetterRow

#: Longest wait for one dead-letter record.
READ_TIMEOUT_S = 10.0


class FullCopies:
    """Reads originals back from the dead-letter topic, one consumer for the whole call."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._consumer: Consumer | None = None

    def _client(self) -> Consumer:
        if self._consumer is None:
            conf = self.settings.kafka_config()
            conf.update(
                {
                    "group.id": f"switchyard-dlq-redrive-{uuid.uuid4().hex}",  # assigned, never joins
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                }
            )
            self._consumer = Consumer(conf)
        return self._consumer

    def read(self, letter: DeadLetterRow) -> bytes | str:
        """The whole original value, or why it cannot be had."""
        where = f"{letter.kafka_topic}[{letter.kafka_partition}]@{letter.kafka_offset}"
        try:
            value = self._fetch(letter.kafka_topic, letter.kafka_partition, letter.kafka_offset)
        except KafkaException as exc:
            return f"the stored copy is cut and the dead-letter record {where} cannot be read: {exc}"
        if value is None:
            return f"the stored copy is cut and the dead-letter record {where} is gone (retention)"
        try:
            record = decode_dead_letter(value)
        except Exception as exc:  # whatever the topic holds there, it is not this dead letter
            return f"the dead-letter record {where} does not decode: {exc}"
        original = record.get("original_value")
        if record.get("dlq_id") != letter.dlq_id or not isinstance(original, bytes):
            return f"the dead-letter record {where} is not dead letter {letter.dlq_id}"
        if len(original) != letter.original_value_size:
            return (
                f"the dead-letter record {where} holds {len(original)} of {letter.original_value_size} bytes"
            )
        return original

    def _fetch(self, topic: str, partition: int, offset: int) -> bytes | None:
        consumer = self._client()
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + READ_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                msg = consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    raise KafkaException(msg.error())
                found = msg.offset()
                if found == offset:
                    return msg.value()
                if found is not None and found > offset:
                    return None  # deleted by retention: the partition starts after it
            return None
        finally:
            consumer.unassign()

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
