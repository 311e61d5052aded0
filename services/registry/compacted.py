"""A compacted topic mirrored into memory: latest value per key, tombstones delete.

Every service that needs a registry (tenants, definitions) tails the topic in a background
thread from the beginning, without a consumer group, so each process sees the whole table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.config import Settings

log = logging.getLogger(__name__)
V = TypeVar("V")


class CompactedTable(Generic[V]):
    """``decode(key, value) -> V`` may raise; the record is then logged and skipped (``rejected``)."""

    def __init__(self, settings: Settings, topic: str, decode: Callable[[str, bytes], V]) -> None:
        self.topic = topic
        self._decode = decode
        self._values: dict[str, V] = {}
        self._lock = threading.Lock()
        self._caught_up = threading.Event()
        self._stop = threading.Event()
        self.rejected: dict[str, str] = {}
        self.version = 0  # bumps on every change, for cheap change detection
        conf = settings.kafka_config()
        conf.update(
            {
                "group.id": f"{settings.topic_prefix}.registry-reader",  # required but never committed
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        self._consumer = Consumer(conf)
        self._thread = threading.Thread(target=self._run, name=f"table-{topic}", daemon=True)

    def start(self) -> CompactedTable[V]:
        metadata = self._consumer.list_topics(self.topic, timeout=15).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise RuntimeError(f"registry topic {self.topic} is missing; run `switchyard topics ensure`")
        self._partitions = list(metadata.partitions)
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions])
        self._thread.start()
        return self

    def wait_caught_up(self, timeout_s: float = 30) -> None:
        if not self._caught_up.wait(timeout_s):
            raise TimeoutError(f"registry {self.topic} not loaded within {timeout_s}s")

    def get(self, key: str) -> V | None:
        with self._lock:
            return self._values.get(key)

    def items(self) -> list[tuple[str, V]]:
        with self._lock:
            return list(self._values.items())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        at_end: set[int] = set()
        try:
            while not self._stop.is_set():
                msg = self._consumer.poll(0.2)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition() or 0)
                        if at_end >= set(self._partitions):
                            self._caught_up.set()
                    else:
                        log.warning("registry read error", extra={"topic": self.topic, "error": str(err)})
                    continue
                self._apply(msg.key(), msg.value())
        finally:
            self._consumer.close()

    def _apply(self, raw_key: bytes | None, value: bytes | None) -> None:
        key = (raw_key or b"").decode(errors="replace")
        if value is None:
            with self._lock:
                self._values.pop(key, None)
                self.version += 1
            return
        try:
            decoded = self._decode(key, value)
        except Exception as exc:  # a bad registry record must not stop the registry
            self.rejected[key] = f"{type(exc).__name__}: {exc}"
            log.warning(
                "registry record rejected", extra={"topic": self.topic, "key": key, "error": str(exc)}
            )
            return
        with self._lock:
            self._values[key] = decoded
            self.rejected.pop(key, None)
            self.version += 1


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
