"""What a finished run keeps in router memory and in the changelog, and why it may keep less.

A run stays in router state for the dedupe window after it finished (a re-sent trigger must find
it). What it needs for that is small: its identity, outcome and history position. Its trigger
data and step records are only needed to *replay* it, so:

* a **succeeded** run is compacted at once to that dedupe record;
* a **failed or cancelled** run keeps its replay state (already bounded by the trigger and
  run-output limits), but a tenant's finished runs on one partition keep at most
  ``SWITCHYARD_MAX_REPLAY_STATE_BYTES`` of it: past that, its oldest finished runs are compacted;
* a finished run whose state record could not be written (too large) is compacted too.

With a history database (``DATABASE_URL``) a replay of a compacted run, or of one that left
memory, reads the run back from its history first (:mod:`services.router.rehydrate`); without
one, or when the history lacks what a replay needs, it is refused with the reason (:func:`refusal`).
A run read back for a command that did not replay it shrinks again (``read_back``): the history
keeps its replay state.
"""

from __future__ import annotations

from collections import OrderedDict

from services.router.state import RunState

SUCCEEDED = "succeeded"
BUDGET = "replay_state_budget"
TOO_LARGE = "record_too_large"
NO_TRIGGER = "trigger_not_in_history"
READ_BACK = "read_back"

_WHY = {
    SUCCEEDED: "a succeeded run keeps only its outcome (to deduplicate triggers), not its trigger data"
    " and step outputs",
    BUDGET: "its tenant's finished runs on this partition passed SWITCHYARD_MAX_REPLAY_STATE_BYTES of"
    " kept replay state, and the oldest ones shrink first",
    TOO_LARGE: "its state record would have been larger than the largest record the engine writes",
    NO_TRIGGER: "its history does not hold its trigger data (its first event was written without it,"
    " being too large)",
    READ_BACK: "it was read back from its history for a command that did not replay it, and its"
    " history cannot be read now",
}


def compact(run: RunState, reason: str) -> None:
    """Shrink a finished run to its dedupe record."""
    run.compacted = reason
    run.trigger = {}
    run.idempotency_key = ""  # the run id already is the dedupe key; the key may be long
    run.steps = {}


def refusal(reason: str) -> str:
    """Why a compacted run cannot be replayed (the text of its ``control_refused`` event)."""
    return f"the run's replay state was compacted ({reason}): {_WHY.get(reason, reason)}"


class ReplayStateBudget:
    """Bytes of replay state kept by one partition's finished runs, per tenant, oldest first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: dict[str, OrderedDict[str, int]] = {}
        self._totals: dict[str, int] = {}

    def total(self, tenant: str) -> int:
        return self._totals.get(tenant, 0)

    def add(self, tenant: str, run_id: str, size: int) -> list[str]:
        """Count a finished run's kept state; return the runs to compact (oldest first) so that
        the tenant's total is back within the limit (the new run itself if it alone is over)."""
        runs = self._runs.setdefault(tenant, OrderedDict())
        self._totals[tenant] = self._totals.get(tenant, 0) - runs.pop(run_id, 0) + size
        runs[run_id] = size
        evicted: list[str] = []
        while self._totals[tenant] > self.limit and runs:
            oldest, bytes_ = runs.popitem(last=False)
            self._totals[tenant] -= bytes_
            evicted.append(oldest)
        self._forget_if_empty(tenant)
        return evicted

    def size_of(self, tenant: str, run_id: str) -> int | None:
        """Bytes of replay state the run keeps here (None: it keeps none)."""
        runs = self._runs.get(tenant)
        return None if runs is None else runs.get(run_id)

    def put_back(self, tenant: str, run_id: str, size: int) -> None:
        """Count a run again after an abort undid its removal (the total was within the limit
        then, so nothing is evicted; it is now the newest of its tenant's)."""
        runs = self._runs.setdefault(tenant, OrderedDict())
        self._totals[tenant] = self._totals.get(tenant, 0) - runs.pop(run_id, 0) + size
        runs[run_id] = size

    def discard(self, tenant: str, run_id: str) -> None:
        """The run no longer keeps finished-run state here (replayed, expired or compacted)."""
        runs = self._runs.get(tenant)
        if runs is None or run_id not in runs:
            return
        self._totals[tenant] -= runs.pop(run_id)
        self._forget_if_empty(tenant)

    def _forget_if_empty(self, tenant: str) -> None:
        if not self._runs.get(tenant):
            self._runs.pop(tenant, None)
            self._totals.pop(tenant, None)
