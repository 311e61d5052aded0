"""Commit progress per partition, so that ``/readyz`` can tell a stalled loop from a busy one.

A transactional loop (:mod:`services.bus.txloop`) reports to its :class:`PartitionProgress` what it
consumed, what it committed and, about once a second, where its consumer stands against the
cached high watermarks (no broker round trip). A partition is **stalled** when it has records to
process and its committed position has not moved for ``stall_after_s``: a record that fails its
transaction again and again, a processor call that holds the thread for minutes, a client call
that never returns. A partition does *not* count when it is caught up (position = high
watermark; a transactional topic's last commit marker is skipped by the consumer), when it is
paused (intake throttling a tenant, the executor saturated: backpressure on purpose), or when the
processor holds its position on purpose in a transaction that completed (the executor commits a
partition up to its oldest running step; intake leaves a throttled tenant's backlog in its topic).

Everything here is evaluated when asked (readiness, scrape): a loop blocked in a call reports
nothing, and that is exactly when its partitions must read as stalled. :data:`BOARD` is the
process-wide registry the loops join and :class:`~services.observability.health.Health` reads; it
also backs ``switchyard_partitions_stalled`` and ``switchyard_partition_progress_age_seconds``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from services.observability import metrics

Key = tuple[str, int]


class Record(Protocol):
    """What the tracker reads of a consumed record (a confluent-kafka ``Message``)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...


def spans(records: Sequence[Record]) -> dict[Key, tuple[int, int]]:
    """``{partition: (first offset, next offset)}`` of a batch."""
    out: dict[Key, tuple[int, int]] = {}
    for msg in records:
        key, offset = (msg.topic() or "", msg.partition() or 0), msg.offset() or 0
        span = out.get(key)
        out[key] = (offset, offset + 1) if span is None else (span[0], offset + 1)
    return out


@dataclass
class _Partition:
    since: float  # last progress, or when the records now waiting were first seen
    pending: bool = False  # records to process, as far as the loop last knew
    committed: int | None = None
    end: int | None = None  # high watermark, as last observed


@dataclass(frozen=True)
class Stall:
    """One stalled partition of one service."""

    service: str
    topic: str
    partition: int
    for_s: float
    lag: int | None  # high watermark - committed position, when both are known

    def describe(self) -> str:
        lag = "" if self.lag is None else f", lag {self.lag}"
        return f"{self.topic}[{self.partition}] for {self.for_s:.0f} s{lag}"


class PartitionProgress:
    """The progress of one loop's partitions. Written by the loop thread, read by any thread."""

    def __init__(
        self, service: str, stall_after_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.stall_after_s = stall_after_s
        self.clock = clock
        self._lock = threading.Lock()
        self._parts: dict[Key, _Partition] = {}
        self._paused: frozenset[Key] = frozenset()
        self._batch: tuple[Sequence[Record], float] | None = None  # taken, not committed yet

    # --- what the loop reports --------------------------------------------------------------
    def assigned(self, keys: Iterable[Key]) -> None:
        now = self.clock()
        with self._lock:
            for key in keys:
                self._parts[key] = _Partition(since=now)

    def revoked(self, keys: Iterable[Key]) -> None:
        with self._lock:
            for key in keys:
                self._parts.pop(key, None)

    def taking(self, records: Sequence[Record]) -> None:
        """The loop took ``records`` and is about to process them. O(1) on this hot path: the
        batch is only looked into when health is asked, or when it was not committed (then the
        next batch folds it in, so that a batch read again keeps its first time)."""
        now = self.clock()
        with self._lock:
            if self._batch is not None:
                self._fold(*self._batch)
            self._batch = (records, now)

    def _fold(self, records: Sequence[Record], since: float) -> None:
        for key, span in spans(records).items():
            part = self._parts.get(key)
            if part is not None:
                self._parts[key] = _with_records(part, span, since)

    def committed(self, positions: Mapping[Key, int]) -> None:
        """A transaction committed these positions (the next offsets to read). The batch taken
        is accounted for: each of its partitions moved on, or the processor holds it."""
        now = self.clock()
        with self._lock:
            self._batch = None
            for key, offset in positions.items():
                part = self._parts.get(key)
                if part is None:
                    continue
                if part.committed is None or offset > part.committed:
                    part.since = now
                part.committed = offset

    def held(self, keys: Iterable[Key]) -> None:
        """The processor set these partitions' positions itself in a transaction that completed:
        it is keeping them where they are on purpose (see the module docstring)."""
        now = self.clock()
        with self._lock:
            for key in keys:
                part = self._parts.get(key)
                if part is not None:
                    part.since = now

    def observe(self, positions: Mapping[Key, int], ends: Mapping[Key, int], paused: Iterable[Key]) -> None:
        """Where the consumer stands (``positions``) against the high watermarks (``ends``), after
        an iteration that went through. A caught-up partition has nothing pending; one whose
        watermark is ahead of the position has records waiting. (librdkafka moves the position
        past a transaction's commit marker, so an idle transactional partition reads caught up.)"""
        now = self.clock()
        paused_now = frozenset(paused)
        with self._lock:
            self._paused = paused_now
            for key, part in self._parts.items():
                end = ends.get(key)
                if end is not None and end >= 0:
                    part.end = end
                position = positions.get(key)
                if key in paused_now:
                    part.since = now  # backpressure: the clock restarts when it resumes
                    continue
                if part.end is None or position is None or position < 0:
                    continue  # not known yet (no fetch, nothing consumed since the assignment)
                if part.committed is None:  # after an iteration that went through, position = committed
                    part.committed = position
                if position >= part.end:
                    part.pending, part.since = False, now
                elif not part.pending:  # records wait that the loop has not taken yet
                    part.pending, part.since = True, now

    # --- what health and metrics read -----------------------------------------------------------
    def stalls(self) -> list[Stall]:
        now = self.clock()
        out: list[Stall] = []
        for (topic, partition), part in sorted(self._view().items()):
            waited = now - part.since
            if not part.pending or (topic, partition) in self._paused or waited < self.stall_after_s:
                continue
            lag = None
            if part.end is not None and part.committed is not None:
                lag = max(0, part.end - part.committed)
            out.append(Stall(self.service, topic, partition, waited, lag))
        return out

    def oldest_pending_s(self) -> float:
        """Seconds without progress of the oldest unpaused partition with records pending (0: none)."""
        now = self.clock()
        ages = [now - p.since for key, p in self._view().items() if p.pending and key not in self._paused]
        return max(ages, default=0.0)

    def _view(self) -> dict[Key, _Partition]:
        """The partitions with the batch in progress (if any) folded in, on copies."""
        with self._lock:
            view = dict(self._parts)
            batch = self._batch
        if batch is not None:
            records, since = batch
            for key, span in spans(records).items():
                part = view.get(key)
                if part is not None:
                    view[key] = _with_records(part, span, since)
        return view


def _with_records(part: _Partition, span: tuple[int, int], since: float) -> _Partition:
    """``part`` once records ``[first, next)`` were taken at ``since`` (a copy): pending from then
    on unless it already was; the span bounds the lag when nothing was observed yet."""
    first, after = span
    return replace(
        part,
        pending=True,
        since=part.since if part.pending else since,
        committed=first if part.committed is None else part.committed,
        end=after if part.end is None or part.end < after else part.end,
    )


class ProgressBoard:
    """The loops of one process. ``bind_metrics`` makes the service gauges read this board."""

    def __init__(self, *, bind_metrics: bool = False) -> None:
        self._lock = threading.Lock()
        self._trackers: list[PartitionProgress] = []
        self._bind_metrics = bind_metrics

    def register(self, tracker: PartitionProgress) -> PartitionProgress:
        with self._lock:
            self._trackers.append(tracker)
        if self._bind_metrics:
            service = tracker.service
            metrics.PARTITIONS_STALLED.labels(service).set_function(lambda: len(self.stalls([service])))
            metrics.PROGRESS_AGE_SECONDS.labels(service).set_function(lambda: self.oldest_pending_s(service))
        return tracker

    def unregister(self, tracker: PartitionProgress) -> None:
        with self._lock:
            if tracker in self._trackers:
                self._trackers.remove(tracker)

    def _of(self, services: Iterable[str] | None) -> list[PartitionProgress]:
        """Trackers of the named services; a name covers its sub-services (``router`` covers
        ``router.core`` and ``router.intake``). ``None``: all of them."""
        with self._lock:
            trackers = list(self._trackers)
        if services is None:
            return trackers
        names = tuple(services)
        return [t for t in trackers if any(t.service == n or t.service.startswith(n + ".") for n in names)]

    def stalls(self, services: Iterable[str] | None = None) -> list[Stall]:
        return [stall for tracker in self._of(services) for stall in tracker.stalls()]

    def oldest_pending_s(self, service: str) -> float:
        return max((t.oldest_pending_s() for t in self._of([service])), default=0.0)


def describe_stalls(stalls: Iterable[Stall]) -> dict[str, str]:
    """``{service: "N partition(s) without commit progress while they have records: ..."}``."""
    by_service: dict[str, list[Stall]] = {}
    for stall in stalls:
        by_service.setdefault(stall.service, []).append(stall)
    return {
        service: f"{len(items)} partition(s) without commit progress while they have records: "
        + ", ".join(s.describe() for s in items)
        for service, items in sorted(by_service.items())
    }


#: The process-wide board: every :class:`~services.bus.txloop.TransactionalLoop` joins it unless
#: given another, and :func:`services.runtime.run_services` hands it to the health endpoints.
BOARD = ProgressBoard(bind_metrics=True)
