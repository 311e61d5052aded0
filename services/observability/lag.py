"""Consumer lag per group, topic, partition and tenant, from watermarks and committed offsets.

``lag = log end offset (high watermark) - committed offset`` of the group; a partition the group
has never committed counts from the log start (the groups use ``auto.offset.reset=earliest``).
Topics written transactionally end with a commit marker, which a caught-up consumer never
commits past until the next record arrives, so an idle partition of the internal topics can read
``1``: alert on sustained growth, not on small values.

:class:`LagReader` does the Kafka round trips (one metadata request, one offsets request per
group, one list-offsets request); :class:`LagCollector` runs it every few seconds in a thread and
publishes ``switchyard_consumer_lag`` and ``switchyard_topic_end_offset``, removing the series
of partitions that went away. ``switchyard status`` uses the reader directly.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]

from services.bus.topics import Topics
from services.config import Settings
from services.observability import metrics

log = logging.getLogger(__name__)
_LATEST: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
_EARLIEST: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class GroupSpec:
    """A consumer group and what it consumes: fixed topics and/or topics matching a regex."""

    group: str
    topics: tuple[str, ...] = ()
    pattern: str | None = None

    def consumes(self, topic: str) -> bool:
        if topic in self.topics:
            return True
        return self.pattern is not None and re.fullmatch(self.pattern.lstrip("^"), topic) is not None


def service_groups(prefix: str) -> dict[str, list[GroupSpec]]:
    """The consumer groups of each service (the service names ``run_services`` uses)."""
    t = Topics(prefix)
    return {
        "router": [
            GroupSpec(f"{prefix}.router.core", (t.inbox,)),
            GroupSpec(f"{prefix}.router.intake", (t.control,), t.trigger_pattern),
        ],
        "executor": [GroupSpec(f"{prefix}.executor", (t.commands,))],
        "projector": [GroupSpec(f"{prefix}.projector", (t.events,))],
    }


def groups_for(prefix: str, services: Iterable[str]) -> list[GroupSpec]:
    """Groups of the named services; unknown names have none."""
    known = service_groups(prefix)
    return [g for name in services for g in known.get(name, [])]


def all_groups(prefix: str) -> list[GroupSpec]:
    return [g for groups in service_groups(prefix).values() for g in groups]


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    tenant: str
    start_offset: int
    end_offset: int
    committed: int | None

    @property
    def lag(self) -> int:
        return lag_of(self.start_offset, self.end_offset, self.committed)


def lag_of(start: int, end: int, committed: int | None) -> int:
    """Records between the group's position and the log end (never negative)."""
    position = start if committed is None or committed < 0 else max(committed, start)
    return max(0, end - position)


def tenant_label(prefix: str, topic: str) -> str:
    """The tenant of a trigger topic; ``""`` for internal topics (shared by tenants)."""
    return Topics(prefix).tenant_of(topic) or ""


class LagReader:
    """Reads end offsets and committed offsets for a set of groups with an AdminClient."""

    def __init__(self, settings: Settings, timeout_s: float = 5.0, admin: AdminClient | None = None) -> None:
        self.prefix = settings.topic_prefix
        self.timeout_s = timeout_s
        self.admin = admin or AdminClient(settings.kafka_config())

    def read(self, groups: Sequence[GroupSpec]) -> list[PartitionLag]:
        self.admin.poll(0)  # hands librdkafka's queued log lines to Python logging (bus/kafka_logs.py)
        metadata = self.admin.list_topics(timeout=self.timeout_s).topics
        wanted: dict[str, list[GroupSpec]] = {}
        partitions: list[TopicPartition] = []
        for name, topic in sorted(metadata.items()):
            consumers = [g for g in groups if g.consumes(name)]
            if not consumers or topic.error is not None:
                continue
            wanted[name] = consumers
            partitions.extend(TopicPartition(name, p) for p in sorted(topic.partitions))
        if not partitions:
            return []
        ends = self._offsets(partitions, _LATEST)
        starts = self._offsets(partitions, _EARLIEST)
        out: list[PartitionLag] = []
        for group in groups:
            committed = self._committed(group.group)
            for tp in partitions:
                if group not in wanted[tp.topic]:
                    continue
                key = (tp.topic, tp.partition)
                out.append(
                    PartitionLag(
                        group=group.group,
                        topic=tp.topic,
                        partition=tp.partition,
                        tenant=tenant_label(self.prefix, tp.topic),
                        start_offset=starts.get(key, 0),
                        end_offset=ends.get(key, 0),
                        committed=committed.get(key),
                    )
                )
        return out

    def end_offsets(self, topics: Iterable[str]) -> dict[tuple[str, int], int]:
        """High watermarks of every partition of ``topics`` that exists."""
        metadata = self.admin.list_topics(timeout=self.timeout_s).topics
        tps = [
            TopicPartition(name, p)
            for name in topics
            if name in metadata and metadata[name].error is None
            for p in metadata[name].partitions
        ]
        return self._offsets(tps, _LATEST) if tps else {}

    def _offsets(self, partitions: list[TopicPartition], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        futures = self.admin.list_offsets(
            {tp: spec for tp in partitions},
            isolation_level=IsolationLevel.READ_UNCOMMITTED,
            request_timeout=self.timeout_s,
        )
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futures.items()}

    def _committed(self, group: str) -> dict[tuple[str, int], int]:
        futures = self.admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=self.timeout_s
        )
        result = futures[group].result()
        return {
            (tp.topic, tp.partition): int(tp.offset)
            for tp in result.topic_partitions or []
            if tp.offset is not None and tp.offset >= 0
        }


class LagCollector:
    """Publishes consumer lag of ``groups`` every ``interval_s`` seconds from a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        groups: Sequence[GroupSpec],
        interval_s: float = 5.0,
        reader: LagReader | None = None,
    ) -> None:
        self.settings = settings
        self.groups = list(groups)
        self.interval_s = interval_s
        self._reader = reader
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-collector", daemon=True)
        self._lag_series: set[tuple[str, str, str, str]] = set()
        self._end_series: set[tuple[str, str, str]] = set()
        self.collected = threading.Event()  # set after the first successful round

    def start(self) -> LagCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval_s + 10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.collect_once()
            self._stop.wait(self.interval_s)

    def collect_once(self) -> list[PartitionLag] | None:
        """One round; returns what it published, or None when Kafka could not be read."""
        try:
            if self._reader is None:
                self._reader = LagReader(self.settings)
            rows = self._reader.read(self.groups)
        except Exception as exc:
            metrics.LAG_COLLECTIONS.labels("error").inc()
            log.warning("consumer lag collection failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return None
        self.publish(rows)
        metrics.LAG_COLLECTIONS.labels("ok").inc()
        self.collected.set()
        return rows

    def publish(self, rows: Sequence[PartitionLag]) -> None:
        lag_series: set[tuple[str, str, str, str]] = set()
        end_series: set[tuple[str, str, str]] = set()
        for row in rows:
            lag_key = (row.group, row.topic, str(row.partition), row.tenant)
            metrics.CONSUMER_LAG.labels(*lag_key).set(row.lag)
            lag_series.add(lag_key)
            end_key = (row.topic, str(row.partition), row.tenant)
            metrics.TOPIC_END_OFFSET.labels(*end_key).set(row.end_offset)
            end_series.add(end_key)
        for lag_key in self._lag_series - lag_series:
            metrics.CONSUMER_LAG.remove(*lag_key)
        for end_key in self._end_series - end_series:
            metrics.TOPIC_END_OFFSET.remove(*end_key)
        self._lag_series, self._end_series = lag_series, end_series

    def clear(self) -> None:
        """Remove every series this collector published."""
        self.publish([])
