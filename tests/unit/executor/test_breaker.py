"""Circuit breaker state machine with an injected clock: open, fail fast, half-open, close."""

from __future__ import annotations

import pytest

from services.executor.breaker import (
    MAX_BREAKERS,
    MAX_TARGETS_PER_TENANT,
    BreakerKey,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    CircuitBreakers,
    CircuitOpenError,
)
from services.executor.guardrails import BREAKER_STATE, Guardrails

KEY: BreakerKey = ("acme", "http.request", "api.example:443")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(
    threshold: int = 3, cooldown: float = 10.0, trials: int = 1
) -> tuple[CircuitBreakers, Clock, list[tuple[BreakerKey, BreakerState | None]]]:
    clock = Clock()
    changes: list[tuple[BreakerKey, BreakerState | None]] = []
    breakers = CircuitBreakers(
        BreakerPolicy(threshold, cooldown, trials),
        clock=clock,
        on_change=lambda key, old, new: changes.append((key, new)),
    )
    return breakers, clock, changes


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """``breaker.state``, read through a call: mypy would keep the attribute narrowed by an
    earlier assert across the ``admit()`` / ``record_*()`` calls that change it."""
    return breaker.state


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
    assert state_of(breaker) is BreakerState.CLOSED


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
    assert state_of(breaker) is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError) as info:  # only one trial at a time
        breaker.admit()
    assert info.value.retry_after == 0 and "half-open" in str(info.value)
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
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
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 9
    with pytest.raises(CircuitOpenError):
        breaker.admit()
    clock.now += 1
    breaker.admit()
    assert state_of(breaker) is BreakerState.HALF_OPEN


def test_a_cancelled_trial_frees_its_slot() -> None:
    breakers, clock, _ = make(threshold=1, cooldown=1)
    fail(breakers, 1)
    clock.now += 1
    breaker = breakers.get(KEY)
    breaker.admit()
    breaker.record_cancelled()
    breaker.admit()  # a new trial may start
    assert state_of(breaker) is BreakerState.HALF_OPEN


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


def test_breakers_are_a_bounded_lru_per_tenant() -> None:
    breakers = CircuitBreakers(BreakerPolicy(1, 10.0), clock=Clock(), max_per_tenant=3, max_total=100)
    keys = [("acme", "http.request", f"h{i}") for i in range(4)]
    for key in keys[:3]:
        breakers.get(key)
    breakers.get(keys[0])  # used again: h1 is now the least recently used
    victim = breakers.get(("globex", "http.request", "h1"))
    victim.admit()
    victim.record_failure()  # another tenant's open breaker...
    breakers.get(keys[3])
    states = breakers.states()
    assert set(states) == {keys[0], keys[2], keys[3], ("globex", "http.request", "h1")}
    assert states[("globex", "http.request", "h1")] is BreakerState.OPEN  # ...is not acme's to evict


def test_the_total_is_bounded_too() -> None:
    breakers = CircuitBreakers(clock=Clock(), max_per_tenant=10, max_total=5)
    for tenant in range(8):
        breakers.get((f"t{tenant}", "http.request", "h"))
    assert len(breakers) == 5
    assert {key[0] for key in breakers.states()} == {"t3", "t4", "t5", "t6", "t7"}


def test_5000_hosts_keep_breakers_and_metric_series_bounded() -> None:
    def series() -> set[tuple[str, ...]]:
        return {
            tuple(sample.labels.values())
            for metric in BREAKER_STATE.collect()
            for sample in metric.samples
            if sample.labels["tenant"] == "hostile"
        }

    def count(state: str) -> float:
        return float(BREAKER_STATE.labels("hostile", "http.request", state)._value.get())

    clock = Clock()
    guards = Guardrails.create(breaker_policy=BreakerPolicy(1, 30.0), clock=clock)
    assert guards.breakers is not None
    for i in range(5000):
        breaker = guards.breakers.get(("hostile", "http.request", f"host-{i}.example"))
        breaker.admit()
        if i % 2:
            breaker.record_failure()  # every other host is down: its breaker opens
        else:
            breaker.record_success()
    assert len(guards.breakers) == MAX_TARGETS_PER_TENANT <= MAX_BREAKERS
    assert series() <= {("hostile", "http.request", s) for s in ("closed", "half_open", "open")}
    # The counts are those of the breakers kept, whatever was evicted on the way.
    kept = guards.breakers.states().values()
    assert count("open") == sum(1 for s in kept if s is BreakerState.OPEN) == MAX_TARGETS_PER_TENANT // 2
    assert count("closed") == sum(1 for s in kept if s is BreakerState.CLOSED) == MAX_TARGETS_PER_TENANT // 2


def test_an_evicted_breaker_held_by_a_call_in_flight_no_longer_moves_the_counts() -> None:
    changes: list[tuple[BreakerKey, BreakerState | None, BreakerState | None]] = []
    breakers = CircuitBreakers(
        BreakerPolicy(1, 10.0),
        clock=Clock(),
        max_per_tenant=1,
        on_change=lambda key, old, new: changes.append((key, old, new)),
    )
    in_flight = breakers.get(KEY)
    in_flight.admit()
    other: BreakerKey = ("acme", "http.request", "other:443")
    breakers.get(other)  # evicts KEY while its call is in flight
    in_flight.record_failure()
    assert changes == [
        (KEY, None, BreakerState.CLOSED),
        (KEY, BreakerState.CLOSED, None),
        (other, None, BreakerState.CLOSED),
    ]
