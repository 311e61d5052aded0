"""A compacted topic mirrored into memory: latest value per key, tombstones delete.

Every service that needs a registry (tenants, definitions) tails the topic in a background
thread from the beginning, without a consumer group, so each process sees the whole table.
:class:`KeyedValues` is the pure in-memory part (what a record does to the table), so that the
readers built on it are tested without a broker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from services.config import Settings

log = logging.getLogger(__name__)
V = TypeVar("V")


class KeyedValues(Generic[V]):
    """The table: latest value per key and, with ``history > 1``, the distinct values each key had.

    History exists for registries whose readers must not let a later record silently replace an
    earlier one (definitions: versions are immutable). It keeps, in arrival order, the first
    ``history - 1`` distinct values of a key plus the latest, distinctness by ``identity(value)``;
    so it is bounded per key. Compaction on the broker drops older values, so a process started
    after compaction only sees what survived. A tombstone deletes the key and its history.
    """

    def __init__(self, *, history: int = 1, identity: Callable[[V], Hashable] | None = None) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self._history_limit = history
        self._identity = identity
        self._values: dict[str, V] = {}
        self._history: dict[str, list[V]] = {}
        self._lock = threading.Lock()
        self.rejected: dict[str, str] = {}
        self.version = 0  # bumps on every change, for cheap change detection

    def get(self, key: str) -> V | None:
        with self._lock:
            return self._values.get(key)

    def items(self) -> list[tuple[str, V]]:
        """The latest value of every key."""
        with self._lock:
            return list(self._values.items())

    def histories(self) -> list[tuple[str, list[V]]]:
        """Every key with its distinct values in arrival order (the latest last)."""
        with self._lock:
            if self._history_limit == 1:
                return [(key, [value]) for key, value in self._values.items()]
            return [(key, list(values)) for key, values in self._history.items()]

    def put(self, key: str, value: V) -> None:
        with self._lock:
            self._values[key] = value
            self.rejected.pop(key, None)
            if self._history_limit > 1:
                self._remember(key, value)
            self.version += 1

    def delete(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)
            self._history.pop(key, None)
            self.version += 1

    def reject(self, key: str, reason: str) -> None:
        with self._lock:
            self.rejected[key] = reason

    def _remember(self, key: str, value: V) -> None:
        values = self._history.setdefault(key, [])
        if self._identity is not None:
            ident = self._identity(value)
            for i, seen in enumerate(values):
                if self._identity(seen) == ident:
                    values[i] = value  # the same value again: keep its place, take the newest copy
                    return
        if len(values) >= self._history_limit:
            values[-1] = value  # bounded: the first values stay, the latest replaces the last slot
        else:
            values.append(value)


class CompactedTable(Generic[V]):
    """``decode(key, value) -> V`` may raise; the record is then logged and skipped (``rejected``).

    ``history`` and ``identity`` are those of :class:`KeyedValues`.
    """

    def __init__(
        self,
        settings: Settings,
        topic: str,
        decode: Callable[[str, bytes], V],
        *,
        history: int = 1,
        identity: Callable[[V], Hashable] | None = None,
    ) -> None:
        self.topic = topic
        self._decode = decode
        self.table: KeyedValues[V] = KeyedValues(history=history, identity=identity)
        self._caught_up = threading.Event()
        self._stop = threading.Event()
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

    @property
    def version(self) -> int:
        return self.table.version

    @property
    def rejected(self) -> dict[str, str]:
        return self.table.rejected

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
        return self.table.get(key)

    def items(self) -> list[tuple[str, V]]:
        return self.table.items()

    def histories(self) -> list[tuple[str, list[V]]]:
        return self.table.histories()

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
            self.table.delete(key)
            return
        try:
            decoded = self._decode(key, value)
        except Exception as exc:  # a bad registry record must not stop the registry
            self.table.reject(key, f"{type(exc).__name__}: {exc}")
            log.warning(
                "registry record rejected", extra={"topic": self.topic, "key": key, "error": str(exc)}
            )
            return
        self.table.put(key, decoded)


def wait_for(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
