"""The deadline grace comes from the settings: every transition that schedules an attempt uses it."""

from __future__ import annotations

from services.config import Settings
from services.router import machine
from services.router.machine import Timer
from tests.unit.router.test_machine import WF, new_run, result


def test_the_default_grace_is_the_settings_default() -> None:
    assert machine.DEADLINE_GRACE_MS == Settings.model_fields["deadline_grace_ms"].default == 2_000


def test_start_result_and_retry_timer_each_use_the_given_grace() -> None:
    run = new_run()
    first = machine.start(run, WF, now_ms=1_000, deadline_grace_ms=250)
    assert [t.due_ms for t in first.timers] == [2_000 + 250]  # step a: 1 s timeout
    assert run.steps["a"].deadline_ms == 2_250

    failed = machine.on_result(run, WF, result("a", 1, ok=False), 1_500, 0.0, deadline_grace_ms=250)
    retry = next(t for t in failed.timers if t.kind == "retry")
    again = machine.on_timer(
        run, WF, Timer(retry.due_ms, run.run_id, "a", 1, "retry"), retry.due_ms, 0.0, deadline_grace_ms=0
    )
    assert [(t.kind, t.due_ms) for t in again.timers] == [("deadline", retry.due_ms + 1_000)]

    done = machine.on_result(run, WF, result("a", 2), retry.due_ms + 10, 0.0, deadline_grace_ms=7)
    [deadline_b] = done.timers  # step b scheduled by the result, default timeout 30 s
    assert deadline_b.due_ms == retry.due_ms + 10 + 30_000 + 7
