"""``schedule``: a cron trigger that emits exactly one trigger event per tick, across restarts.

Instance configuration::

    - name: nightly-report          # instance name: part of every idempotency key
      type: schedule
      tenant: acme
      config:
        event_type: report.nightly
        cron: "0 2 * * *"           # five-field cron (croniter), evaluated in UTC
        data: {report: daily}       # the trigger's payload
        catch_up_s: 3600            # how far back missed ticks are still emitted (default 1 h)

Each tick *T* is emitted with the idempotency key (and Kafka key) ``schedule:<name>:<T>``, *T* in
ISO 8601 UTC (``2025-01-31T02:00:00Z``), ``occurred_at`` = *T* and ``data`` as configured.

Exactly one per tick: emission returns only once the broker acknowledged the record (idempotent
producer). On start the trigger reads back the keys ``schedule:<name>:…`` its tenant's topic holds
from the last ``catch_up_s`` seconds, and resumes after the latest tick found there:

- ticks between that tick and now (missed while it was down) are emitted at once, in order —
  the **catch-up window** is bounded by ``catch_up_s``: a tick older than that is skipped (logged);
- when the window holds no tick of this instance (first start, or down for longer than the window),
  nothing is caught up: the first emission is the first tick after the start.

The topic is the only state. Two instances of one schedule running at once would both emit; the
deterministic key still makes the router start one run per tick (its dedupe), but the topic would
hold two records — run one instance per schedule.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.contracts.records import JsonObject
from services.observability import logs
from services.triggers.plugins import Emission, EmitError, Emitter

log = logging.getLogger("services.triggers.schedule")

MAX_BACKOFF_S = 30.0


class ScheduleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: str = Field(min_length=1, max_length=200)
    cron: str = Field(description="Five-field cron expression, in UTC.")
    data: JsonObject = Field(default_factory=dict)
    catch_up_s: float = Field(
        default=3600.0, ge=0, le=7 * 24 * 3600, description="Missed ticks at most this old are emitted."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"not a five-field cron expression: {value!r}")
        return value


def tick_key(instance: str, tick: datetime) -> str:
    return f"schedule:{instance}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def parse_tick(key: str, prefix: str) -> datetime | None:
    try:
        return datetime.strptime(key[len(prefix) :], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def ticks_after(cron: str, start: datetime) -> Iterator[datetime]:
    """Ticks strictly after ``start``, in order."""
    it = croniter(cron, start.astimezone(UTC))
    while True:
        tick: datetime = it.get_next(datetime)
        yield tick.astimezone(UTC)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ScheduleTrigger:
    """The built-in cron trigger. ``clock`` and ``poll_s`` are injectable for tests."""

    name = "schedule"
    Config = ScheduleConfig

    def __init__(self, clock: Callable[[], datetime] = _utcnow, poll_s: float = 1.0) -> None:
        self.clock = clock
        self.poll_s = poll_s

    def run(self, config: ScheduleConfig, emit: Emitter, stop: threading.Event, /) -> None:
        prefix = f"schedule:{emit.instance}:"
        now = self.clock()
        window = timedelta(seconds=config.catch_up_s)
        emitted = self._recent_keys(emit, prefix, now - window, stop)
        if emitted is None:
            return
        found = [t for t in (parse_tick(k, prefix) for k in emitted) if t is not None]
        base = max(found) if found else now
        bound = logs.bind(log, tenant=emit.tenant, trigger=emit.instance)
        bound.info(
            "schedule starting",
            extra={"cron": config.cron, "resume_after": base.isoformat(), "caught_up": bool(found)},
        )
        for tick in ticks_after(config.cron, base):
            if not self._wait_until(tick, stop):
                return
            key = tick_key(emit.instance, tick)
            if key in emitted:
                continue
            late = self.clock() - tick
            if late > window:
                bound.warning("tick skipped: older than the catch-up window", extra={"tick": key})
                continue
            if not self._emit(emit, config, tick, key, stop, bound):
                return

    def _recent_keys(
        self, emit: Emitter, prefix: str, since: datetime, stop: threading.Event
    ) -> set[str] | None:
        """What the topic holds, retried (keeping the start time, so no tick is lost); None if stopped."""
        backoff = 0.5
        while not stop.is_set():
            try:
                return emit.recent_keys(prefix, since)
            except EmitError as exc:
                log.warning(
                    "cannot read emitted ticks back; retrying",
                    extra={"tenant": emit.tenant, "trigger": emit.instance, "error": str(exc)},
                )
                stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
        return None

    def _wait_until(self, tick: datetime, stop: threading.Event) -> bool:
        """Wait until the clock reaches ``tick``; False if stopped first."""
        while not stop.is_set():
            remaining = (tick - self.clock()).total_seconds()
            if remaining <= 0:
                return True
            stop.wait(min(self.poll_s, remaining))
        return False

    def _emit(
        self,
        emit: Emitter,
        config: ScheduleConfig,
        tick: datetime,
        key: str,
        stop: threading.Event,
        bound: logs.BoundLogger,
    ) -> bool:
        """Emit one tick, retrying with backoff until it is acknowledged; False if stopped first."""
        backoff = 0.5
        emission = Emission(config.event_type, config.data, key, occurred_at=tick)
        while not stop.is_set():
            try:
                emit(emission)
            except EmitError as exc:
                bound.warning("emit failed; retrying", extra={"tick": key, "error": str(exc)})
                stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                continue
            bound.info("tick emitted", extra={"tick": key})
            return True
        return False
