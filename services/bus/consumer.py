"""The transactional loop's consumer: a confluent-kafka ``Consumer`` that knows what is paused.

librdkafka has no call that lists paused partitions, and processors pause and resume on their own
(intake throttling a tenant, the executor when saturated). The stall detector
(:mod:`services.observability.progress`) must not mistake that backpressure for a stall, so the
consumer remembers what it was asked to pause.
"""

from __future__ import annotations

from confluent_kafka import Consumer, TopicPartition


class PauseAwareConsumer(Consumer):
    _paused: frozenset[tuple[str, int]] = frozenset()

    def pause(self, partitions: list[TopicPartition]) -> None:
        super().pause(partitions)
        self._paused = self._paused | {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        super().resume(partitions)
        self._paused = self._paused - {(p.topic, p.partition) for p in partitions}

    def forget_paused(self, partitions: list[TopicPartition]) -> None:
        """Partitions assigned anew or revoked start unpaused in librdkafka."""
        self._paused = self._paused - {(p.topic, p.partition) for p in partitions}

    def paused_partitions(self) -> frozenset[tuple[str, int]]:
        """A snapshot (immutable, so other threads may read it)."""
        return self._paused
