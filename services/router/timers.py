"""The durable timers of one partition's runs (retry backoffs, step deadlines).

A timer dies when its attempt gets its result or its run ends — usually long before it is due
(a deadline is the step's whole timeout away). The queue keeps an index of the live timers per
run, so a dead one is forgotten at once, and a heap ordered by due time; dead heap entries are
skipped when they come due and swept out as soon as they outnumber the live ones (a rebuild in
O(n), so O(1) amortised per timer). Memory thus follows the live timers, not every deadline ever
set in the last timeout.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from services.router.machine import Timer

TimerKey = tuple[str, int, str]  # step id, attempt, kind

#: Dead heap entries tolerated besides one per live timer before the heap is swept.
SWEEP_SLACK = 64


def _key(timer: Timer) -> TimerKey:
    return (timer.step_id, timer.attempt, timer.kind)


class TimerQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Timer]] = []
        self._live: dict[str, dict[TimerKey, Timer]] = {}  # run id -> its live timers
        self._count = 0
        self._seq = 0

    def __len__(self) -> int:
        """Live timers."""
        return self._count

    @property
    def queued(self) -> int:
        """Heap entries, dead ones included (at most about twice the live ones)."""
        return len(self._heap)

    def of_run(self, run_id: str) -> list[Timer]:
        return list(self._live.get(run_id, {}).values())

    def add(self, timer: Timer) -> None:
        timers = self._live.setdefault(timer.run_id, {})
        if _key(timer) not in timers:
            self._count += 1
        timers[_key(timer)] = timer
        self._seq += 1
        heapq.heappush(self._heap, (timer.due_ms, self._seq, timer))
        self._sweep_if_needed()

    def keep(self, run_id: str, live: Callable[[Timer], bool]) -> None:
        """Forget the run's timers for which ``live`` is false (their attempt is over)."""
        timers = self._live.get(run_id)
        if not timers:
            return
        for key, timer in list(timers.items()):
            if not live(timer):
                del timers[key]
                self._count -= 1
        if not timers:
            del self._live[run_id]
        self._sweep_if_needed()

    def drop_run(self, run_id: str) -> None:
        """Forget every timer of a run (it finished, or left this partition's state)."""
        timers = self._live.pop(run_id, None)
        if timers:
            self._count -= len(timers)
            self._sweep_if_needed()

    def pop_due(self, now_ms: int) -> Iterator[Timer]:
        """Live timers due at ``now_ms``, earliest first, each removed as it is yielded. Timers
        added while iterating are seen too if they are due."""
        while self._heap and self._heap[0][0] <= now_ms:
            _, _, timer = heapq.heappop(self._heap)
            timers = self._live.get(timer.run_id)
            if timers is None or timers.get(_key(timer)) is not timer:
                continue  # dead, or replaced by a later timer of the same attempt
            del timers[_key(timer)]
            self._count -= 1
            if not timers:
                del self._live[timer.run_id]
            yield timer

    def _is_live(self, timer: Timer) -> bool:
        timers = self._live.get(timer.run_id)
        return timers is not None and timers.get(_key(timer)) is timer

    def _sweep_if_needed(self) -> None:
        if len(self._heap) > 2 * self._count + SWEEP_SLACK:
            self._heap = [entry for entry in self._heap if self._is_live(entry[2])]
            heapq.heapify(self._heap)
