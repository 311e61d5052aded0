"""The run store: every run of the partitions the core owns, in memory, backed by the changelog.

Per partition (:class:`PartitionState`) it holds the runs and what is derived from them: timers,
admission (slots and queues), open runs by definition, finished runs in expiry order and the
replay-state budget. A partition is read back from its changelog records with :func:`load_record`
and :func:`reindex` (the reading itself: :mod:`services.router.restore`). Across partitions,
:class:`RunStore` keeps

* the **dirty set**: the latest checked state record of each run changed since the last flush, so
  a run changed N times in a batch writes one changelog record;
* **pre-images**: each run as it was before its first change since the last commit, so an aborted
  transaction is undone in memory by putting back only the runs it touched
  (:meth:`RunStore.roll_back`), without reading any changelog again;
* **expiry** of finished runs past the retention window (a tombstone each).

Pure: no I/O.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from dataclasses import dataclass, field

from services.contracts.text import bounded_text
from services.router import retention
from services.router.admission import ACTIVE, Admission
from services.router.bulk import collection_paused
from services.router.event_waits import WaitIndex
from services.router.machine import Timer
from services.router.outgoing import Outgoing, RecordMapper
from services.router.retention import ReplayStateBudget
from services.router.state import Checkpoint, RunState, RunStatus
from services.router.state_record import snapshot_of
from services.router.timers import TimerQueue

log = logging.getLogger(__name__)
DefinitionKey = tuple[str, str, int]  # tenant, workflow, version
FinishedEntry = tuple[int, str]  # finished at (ms), run id


@dataclass
class PartitionState:
    partition: int
    runs: dict[str, RunState] = field(default_factory=dict)
    timers: TimerQueue = field(default_factory=TimerQueue)
    admission: Admission = field(default_factory=Admission)
    finished: deque[FinishedEntry] = field(default_factory=deque)
    open_runs: dict[DefinitionKey, dict[str, None]] = field(default_factory=dict)  # not finished
    replay_budget: ReplayStateBudget = field(default_factory=lambda: ReplayStateBudget(64 * 1024 * 1024))
    arrivals: int = 0
    waits: WaitIndex = field(default_factory=WaitIndex)  # runs waiting for an event (wait_for)

    def opened(self, run: RunState) -> None:
        self.open_runs.setdefault((run.tenant, run.workflow, run.version), {})[run.run_id] = None

    def closed(self, run: RunState) -> None:
        key = (run.tenant, run.workflow, run.version)
        runs = self.open_runs.get(key)
        if runs is not None:
            runs.pop(run.run_id, None)
            if not runs:
                del self.open_runs[key]


def step_timers(run: RunState) -> list[Timer]:
    """The timers a run's step records imply (deadlines of running attempts, pending retries)."""
    timers = []
    for step_id, rec in run.steps.items():
        if rec.status == "running" and rec.deadline_ms is not None:
            timers.append(Timer(rec.deadline_ms, run.run_id, step_id, rec.attempt, "deadline"))
        elif rec.status == "retrying" and rec.retry_at_ms is not None:
            timers.append(Timer(rec.retry_at_ms, run.run_id, step_id, rec.attempt, "retry"))
    return timers


def load_record(state: PartitionState, sizes: dict[str, int], key: bytes | None, value: bytes | None) -> None:
    """Apply one changelog record read back on restore (``sizes``: bytes of each run's record)."""
    run_id = (key or b"").decode("utf-8", "replace")
    if value is None:
        state.runs.pop(run_id, None)
        sizes.pop(run_id, None)
        return
    try:
        run = RunState.from_json(snapshot_of(value))
    except Exception as exc:  # the run is forgotten (loudly) rather than the partition stalled
        state.runs.pop(run_id, None)
        sizes.pop(run_id, None)
        log.error(
            "unreadable router state record skipped",
            extra={
                "run_id": bounded_text(run_id, 256),
                "partition": state.partition,
                "error": bounded_text(f"{type(exc).__name__}: {exc}", 2000),
            },
        )
        return
    state.runs[run_id] = run
    sizes[run_id] = len(value)


def reindex(state: PartitionState, sizes: dict[str, int]) -> None:
    """Rebuild queues, counts, timers and retention accounting from the restored runs."""
    with collection_paused():
        _reindex(state, sizes)


def _reindex(state: PartitionState, sizes: dict[str, int]) -> None:
    pending: list[RunState] = []
    kept: list[tuple[int, str, int]] = []
    for run in state.runs.values():
        state.arrivals = max(state.arrivals, run.arrival)
        if not run.status.terminal:
            state.opened(run)
        if run.status == RunStatus.PENDING:
            pending.append(run)
        elif run.status in ACTIVE:
            state.admission.count(run, +1)
            for timer in step_timers(run):
                state.timers.add(timer)
        elif run.finished_ms is not None:
            state.finished.append((run.finished_ms, run.run_id))
            # State written before finished runs shrank: shrink it in memory now; the
            # changelog follows with the run's next write (a restore stays write-free).
            if run.compacted is None and run.status == RunStatus.SUCCEEDED:
                retention.compact(run, retention.SUCCEEDED)
            elif run.compacted is None:
                kept.append((run.finished_ms, run.run_id, sizes.get(run.run_id, 0)))
    for run in sorted(pending, key=lambda r: r.arrival):
        state.admission.enqueue(run)
    state.finished = deque(sorted(state.finished))
    for _, run_id, size in sorted(kept):
        run = state.runs[run_id]
        for victim in state.replay_budget.add(run.tenant, run_id, size):
            retention.compact(state.runs[victim], retention.BUDGET)


@dataclass(frozen=True, slots=True)
class PreImage:
    """A run as it was before its first change since the last commit (``run`` None: it did not
    exist). The checkpoint covers what a step changes; command ids are replaced, never mutated."""

    run: RunState | None
    mark: Checkpoint | None
    commands: dict[str, int]
    budget: int | None  # bytes it counted in the replay-state budget


class RunStore:
    def __init__(self, mapper: RecordMapper, replay_state_limit: int) -> None:
        self.mapper = mapper
        self.replay_state_limit = replay_state_limit
        self.partitions: dict[int, PartitionState] = {}
        self.dirty: dict[str, Outgoing] = {}  # run id -> its latest state record, checked
        self._before: dict[tuple[int, str], PreImage] = {}
        self._arrivals: dict[int, int] = {}  # partition -> its arrival counter at the last commit
        self._expired: dict[int, list[FinishedEntry]] = {}  # expiry entries taken since then
        # (partition, tenant) -> its pending queue at the last commit (None: it had none)
        self._queues: dict[tuple[int, str], list[str] | None] = {}

    def new_partition(self, number: int) -> PartitionState:
        state = PartitionState(number)
        state.replay_budget.limit = self.replay_state_limit
        return state

    def drop_partition(self, number: int) -> None:
        self.partitions.pop(number, None)
        self._before = {key: pre for key, pre in self._before.items() if key[0] != number}
        self._arrivals.pop(number, None)
        self._expired.pop(number, None)
        self._queues = {key: queue for key, queue in self._queues.items() if key[0] != number}

    @property
    def run_count(self) -> int:
        return sum(len(p.runs) for p in self.partitions.values())

    # --- pre-images -------------------------------------------------------------------------------
    def touch(self, state: PartitionState, run_id: str, tenant: str) -> None:
        """Keep the run's pre-image unless it changed already since the last commit, and its
        tenant's queue. Called before anything of a run changes (or a run is created, replaced
        or removed): only a change to a run of the tenant changes the tenant's queue."""
        key = (state.partition, run_id)
        if key in self._before:
            return
        self._arrivals.setdefault(state.partition, state.arrivals)
        self.touch_queue(state, tenant)
        run = state.runs.get(run_id)
        if run is None:
            self._before[key] = PreImage(None, None, {}, None)
        else:
            size = state.replay_budget.size_of(run.tenant, run_id)
            self._before[key] = PreImage(run, run.checkpoint(), run.commands, size)

    def touch_queue(self, state: PartitionState, tenant: str) -> None:
        """Keep the tenant's pending queue as it was at the last commit (before an admission
        decision changes it)."""
        if (state.partition, tenant) not in self._queues:
            queue = state.admission.pending.get(tenant)
            self._queues[(state.partition, tenant)] = None if queue is None else list(queue)

    @property
    def touched(self) -> int:
        return len(self._before)

    def touched_runs(self) -> list[tuple[int, str]]:
        """(partition, run id) of every run changed since the last commit."""
        return list(self._before)

    def committed(self) -> None:
        """What memory holds is now what the changelog holds: forget the pre-images."""
        self._before.clear()
        self._arrivals.clear()
        self._expired.clear()
        self._queues.clear()

    def roll_back(self) -> None:
        """Undo everything since the last commit: the touched runs are put back as they were, with
        their timers, slots, open-run and budget entries (a put-back budget entry counts as its
        tenant's newest), their tenants' queues as they were; expired ones return."""
        self.dirty.clear()
        for (number, run_id), pre in self._before.items():
            state = self.partitions.get(number)
            if state is None:
                continue
            current = state.runs.pop(run_id, None)
            if current is not None:
                _unindex(state, current)
            if pre.run is not None and pre.mark is not None:
                pre.run.rollback(pre.mark)
                pre.run.commands = pre.commands
                state.runs[run_id] = pre.run
                _index(state, pre.run, pre.budget)
        for number, entries in self._expired.items():
            state = self.partitions.get(number)
            if state is not None:
                state.finished = deque(heapq.merge(sorted(entries), state.finished))
        for (number, tenant), queue in self._queues.items():
            state = self.partitions.get(number)
            if state is None:
                continue
            if queue is None:
                state.admission.pending.pop(tenant, None)
            else:
                state.admission.pending[tenant] = queue
        for number, arrivals in self._arrivals.items():
            state = self.partitions.get(number)
            if state is not None:
                state.arrivals = arrivals
        self.committed()

    # --- changelog writes ---------------------------------------------------------------------------
    def write(self, run_id: str, record: Outgoing) -> None:
        """The run's latest state record; only the last one of a batch is sent."""
        self.dirty[run_id] = record

    def take_dirty(self) -> list[Outgoing]:
        records = list(self.dirty.values())
        self.dirty.clear()
        return records

    # --- expiry ---------------------------------------------------------------------------------------
    def expire(self, state: PartitionState, now_ms: int, retention_ms: int) -> list[Outgoing]:
        """Remove the runs that finished ``retention_ms`` ago or more; their tombstones."""
        tombstones = []
        while state.finished and state.finished[0][0] + retention_ms <= now_ms:
            entry = state.finished.popleft()
            self._expired.setdefault(state.partition, []).append(entry)
            finished_at, run_id = entry
            run = state.runs.get(run_id)
            if run is not None and run.status.terminal and run.finished_ms == finished_at:
                self.touch(state, run_id, run.tenant)
                del state.runs[run_id]
                state.replay_budget.discard(run.tenant, run_id)
                state.timers.drop_run(run_id)
                self.dirty.pop(run_id, None)
                tombstones.append(self.mapper.tombstone(run_id, state.partition))
        return tombstones


def _unindex(state: PartitionState, run: RunState) -> None:
    """Take a run out of everything derived from it but its tenant's queue (put back whole) and
    its finished entry (stale entries are skipped at expiry)."""
    state.closed(run)
    if run.status in ACTIVE:
        state.admission.count(run, -1)
    state.timers.drop_run(run.run_id)
    state.replay_budget.discard(run.tenant, run.run_id)


def _index(state: PartitionState, run: RunState, budget: int | None) -> None:
    if not run.status.terminal:
        state.opened(run)
    if run.status in ACTIVE:
        state.admission.count(run, +1)
        for timer in step_timers(run):
            state.timers.add(timer)
    if budget is not None:
        state.replay_budget.put_back(run.tenant, run.run_id, budget)
