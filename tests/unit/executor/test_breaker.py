"""Circuit breaker state machine with an injected clock: open, fail fast, half-open, close."""

from __future__ import annotations

import pytest

from services.executor.breaker import (
    BreakerKey,
    BreakerPolicy,
    BreakerState,
    CircuitBreakers,
    CircuitOpenError,
)

KEY: BreakerKey = ("acme", "http.request", "api.example:443")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(threshold: int = 3, cooldown: float = 10.0, trials: int = 1) -> tuple[CircuitBreakers, Clock, list]:
    clock, changes = Clock(), []
    breakers = CircuitBreakers(
        BreakerPolicy(threshold, cooldown, trials),
        clock=clock,
        on_change=lambda key, state: changes.append((key, state)),
    )
    return breakers, clock, changes


def fail(breakers: CircuitBreakers, times: int) -> None:
    for _ in range(times):
        breaker = breakers.get(KEY)
        breaker.admit()
        breaker.record_failure()


def test_opens_after_n_consecutive_failures_and_fails_fast() -> None:
    breakers, clock, changes = make(threshold=3)
    fail(breakers, 2)
    assert breakers.get(KEY).state is BreakerState.CLOSED
    fail(breakers, 1)
    assert breakers.get(KEY).state is BreakerState.OPEN
    clock.now += 4
    with pytest.raises(CircuitOpenError) as info:
        breakers.get(KEY).admit()
    assert info.value.retry_after == pytest.approx(6.0)
    assert "circuit open" in str(info.value)
    assert changes == [(KEY, BreakerState.CLOSED), (KEY, BreakerState.OPEN)]


def test_a_success_resets_the_failure_count() -> None:
    breakers, _, _ = make(threshold=3)
    fail(breakers, 2)
    breaker = breakers.get(KEY)
    breaker.admit()
    breaker.record_success()
    fail(breakers, 2)
    assert breaker.state is BreakerState.CLOSED


def test_half_opens_after_the_cooldown_and_closes_on_success() -> None:
    breakers, clock, changes = make(threshold=2, cooldown=10)
    fail(breakers, 2)
    breaker = breakers.get(KEY)
    clock.now += 9.99
    assert breaker.current() is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    clock.now += 0.01
    assert breaker.current() is BreakerState.HALF_OPEN
    breaker.admit()  # the trial call
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError) as info:  # only one trial at a time
        breaker.admit()
    assert info.value.retry_after == 0 and "half-open" in str(info.value)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.admit()  # closed: calls flow again
    assert [state for _, state in changes] == [
        BreakerState.CLOSED,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_a_failed_trial_reopens_for_a_new_cooldown() -> None:
    breakers, clock, _ = make(threshold=2, cooldown=10)
    fail(breakers, 2)
    clock.now += 10
    breaker = breakers.get(KEY)
    breaker.admit()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    clock.now += 1
    breaker.admit()
    assert breaker.state is BreakerState.HALF_OPEN


def test_a_cancelled_trial_frees_its_slot() -> None:
    breakers, clock, _ = make(threshold=1, cooldown=1)
    fail(breakers, 1)
    clock.now += 1
    breaker = breakers.get(KEY)
    breaker.admit()
    breaker.record_cancelled()
    breaker.admit()  # a new trial may start
    assert breaker.state is BreakerState.HALF_OPEN


def test_breakers_are_independent_per_key() -> None:
    breakers, _, _ = make(threshold=1)
    fail(breakers, 1)
    other_target: BreakerKey = ("acme", "http.request", "other:443")
    other_tenant: BreakerKey = ("globex", "http.request", "api.example:443")
    breakers.get(other_target).admit()
    breakers.get(other_tenant).admit()
    assert breakers.states() == {
        KEY: BreakerState.OPEN,
        other_target: BreakerState.CLOSED,
        other_tenant: BreakerState.CLOSED,
    }


@pytest.mark.parametrize("policy", [(0, 1.0, 1), (1, -1.0, 1), (1, 1.0, 0)])
def test_invalid_policies_are_rejected(policy: tuple[int, float, int]) -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(*policy)
