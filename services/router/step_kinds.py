"""The steps the router runs itself (every kind but ``action``): what a kind's module answers.

A step of such a kind (``wait``, ``approval``, …) has no executor command and takes no executor
slot. Its module (:mod:`services.router.waits`, :mod:`services.router.approvals`) is pure: it
answers with one of the outcomes below, and the state machine (:mod:`services.router.machine`)
applies it the same way for every kind:

* :class:`Park` — the step is ``running`` until ``due_ms`` (a wake-up or a timeout), which the
  step record keeps as ``deadline_ms``: the run's durable ``deadline`` timer, rebuilt from the
  state after a restart, carries it; when it fires the kind's deadline handler answers;
* :class:`Finish` — the step succeeds with ``output``;
* :class:`Fail` — the step fails with ``error_kind`` (never retried: the same inputs, the same
  decision, fail the same way).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TypeAlias

from services.contracts.records import JsonObject


@dataclass(frozen=True, slots=True)
class Park:
    due_ms: int
    #: What the step waits for, as its ``step_scheduled`` event shows it (``detail.waiting``).
    waiting: JsonObject


@dataclass(frozen=True, slots=True)
class Finish:
    output: JsonObject


@dataclass(frozen=True, slots=True)
class Fail:
    error_kind: str
    message: str


Outcome: TypeAlias = Park | Finish | Fail
#: What a deadline (wake-up, timeout) of a parked step comes to.
Ending: TypeAlias = Finish | Fail


def rfc3339(ms: int) -> str:
    """``ms`` since the epoch as an RFC 3339 UTC timestamp, e.g. ``2026-11-30T22:00:00.000Z``."""
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
