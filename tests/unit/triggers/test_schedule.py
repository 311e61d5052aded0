"""The schedule trigger on a fake clock: one emission per tick, resume, bounded catch-up, retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from pydantic import ValidationError

from services.triggers.plugins import EmitError
from services.triggers.schedule import ScheduleConfig, ScheduleTrigger, parse_tick, tick_key
from tests.unit.triggers.helpers import FakeClock, MemoryEmitter, at, key

EVERY_MINUTE = {"event_type": "report.tick", "cron": "* * * * *", "data": {"kind": "tick"}}


@contextmanager
def running(clock: FakeClock, emitter: MemoryEmitter, **config: Any) -> Iterator[None]:
    trigger = ScheduleTrigger(clock=clock, poll_s=0.005)
    stop = threading.Event()
    thread = threading.Thread(
        target=trigger.run, args=(ScheduleConfig(**{**EVERY_MINUTE, **config}), emitter, stop), daemon=True
    )
    emitter.scanned.clear()
    thread.start()
    assert emitter.scanned.wait(5), "the schedule did not look up its emitted ticks"
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        assert not thread.is_alive(), "schedule did not stop"


def test_first_start_emits_from_the_next_tick_one_event_per_tick() -> None:
    clock, emitter = FakeClock(at(0, 30)), MemoryEmitter()
    with running(clock, emitter):
        clock.advance(30)  # 12:01:00
        emitter.wait_for(1)
        clock.advance(59)
        clock.advance(61)  # 12:03:00
        emitter.wait_for(3)
    assert emitter.keys() == [key(1), key(2), key(3)]
    first = emitter.emitted[0]
    assert (first.event_type, first.data, first.occurred_at) == ("report.tick", {"kind": "tick"}, at(1))


def test_restart_resumes_after_the_last_emitted_tick_and_catches_up() -> None:
    clock, emitter = FakeClock(at(0, 30)), MemoryEmitter()
    with running(clock, emitter):
        clock.advance(30)
        emitter.wait_for(1)
    clock.advance(150)  # down through 12:02 and 12:03
    with running(clock, emitter):
        emitter.wait_for(3)  # caught up at once
        clock.advance(60)  # 12:04:00
        emitter.wait_for(4)
    with running(clock, emitter):  # restart right away: nothing to catch up, nothing twice
        clock.advance(60)
        emitter.wait_for(5)
    assert emitter.keys() == [key(1), key(2), key(3), key(4), key(5)]


def test_catch_up_is_bounded_by_the_window() -> None:
    clock, emitter = FakeClock(at(0, 30)), MemoryEmitter()
    with running(clock, emitter, catch_up_s=150):
        clock.advance(30)
        emitter.wait_for(1)  # 12:01
    clock.advance(200)  # now 12:04:20; 12:01 is 200 s old: outside the window, so no resume point
    with running(clock, emitter, catch_up_s=150):
        clock.advance(40)  # 12:05:00
        emitter.wait_for(2)
    assert emitter.keys() == [key(1), key(5)]


def test_ticks_older_than_the_window_are_skipped_on_resume() -> None:
    clock, emitter = FakeClock(at(0, 30)), MemoryEmitter()
    with running(clock, emitter, catch_up_s=130):
        clock.advance(30)
        clock.advance(60)
        emitter.wait_for(2)  # 12:01, 12:02
    clock.advance(125)  # 12:04:05: 12:02 is in the window, 12:03 and 12:04 missed
    with running(clock, emitter, catch_up_s=130):
        emitter.wait_for(4)
    assert emitter.keys() == [key(1), key(2), key(3), key(4)]


def test_emit_failures_are_retried_with_the_same_key() -> None:
    clock, emitter = FakeClock(at(0, 59)), MemoryEmitter()
    emitter.fail_next = 2
    with running(clock, emitter):
        clock.advance(1)
        emitter.wait_for(1, timeout_s=15)
    assert emitter.keys() == [key(1)]


def test_keys_round_trip() -> None:
    assert tick_key("nightly", at(3)) == "schedule:nightly:2030-01-01T12:03:00Z"
    assert parse_tick(tick_key("n", at(3)), "schedule:n:") == at(3)
    assert parse_tick("schedule:n:garbage", "schedule:n:") is None


@pytest.mark.parametrize("cron", ["* * * *", "61 * * * *", "every minute", "* * * * * *"])
def test_bad_cron_is_rejected(cron: str) -> None:
    with pytest.raises(ValidationError):
        ScheduleConfig(event_type="x", cron=cron)


class FlakyScan(MemoryEmitter):
    def __init__(self) -> None:
        super().__init__()
        self.scan_failures = 2
        self.tried = threading.Event()

    def recent_keys(self, prefix: str, since: Any) -> set[str]:
        self.tried.set()
        if self.scan_failures > 0:
            self.scan_failures -= 1
            raise EmitError("no leader for the partition yet")
        return super().recent_keys(prefix, since)


def test_a_failed_read_back_is_retried_without_losing_the_start_time() -> None:
    clock, emitter = FakeClock(at(0, 30)), FlakyScan()
    trigger = ScheduleTrigger(clock=clock, poll_s=0.005)
    stop = threading.Event()
    thread = threading.Thread(
        target=trigger.run, args=(ScheduleConfig(**EVERY_MINUTE), emitter, stop), daemon=True
    )
    thread.start()
    assert emitter.tried.wait(5)  # the start time is taken
    clock.advance(30)  # 12:01 passes while the schedule still retries its read-back
    emitter.wait_for(1, timeout_s=15)
    stop.set()
    thread.join(5)
    assert emitter.keys() == [key(1)]
