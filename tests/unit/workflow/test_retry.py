"""Retry policy: bounded exponential backoff with deterministic jitter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.workflow import RetryPolicy


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, multiplier=2.0, jitter=0.0)
    assert [policy.backoff(a, 0.5) for a in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_jitter_uses_the_given_random_number() -> None:
    policy = RetryPolicy(initial_backoff=4.0, max_backoff=100.0, multiplier=2.0, jitter=0.5)
    assert policy.backoff(1, 0.0) == 2.0
    assert policy.backoff(1, 0.5) == 3.0
    assert policy.backoff(1, 0.999) == pytest.approx(3.998)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=60.0, multiplier=10.0, jitter=0.0)
    assert policy.backoff(10_000, 0.0) == 60.0


@pytest.mark.parametrize(("attempt", "rand"), [(0, 0.5), (1, 1.0), (1, -0.1)])
def test_backoff_rejects_bad_arguments(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError):
        RetryPolicy().backoff(attempt, rand)


@given(
    initial=st.floats(0.01, 100),
    extra=st.floats(0, 10_000),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 200),
    rand=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_within_bounds(
    initial: float, extra: float, multiplier: float, jitter: float, attempt: int, rand: float
) -> None:
    policy = RetryPolicy(
        initial_backoff=initial, max_backoff=initial + extra, multiplier=multiplier, jitter=jitter
    )
    delay = policy.backoff(attempt, rand)
    assert 0 <= delay <= policy.max_backoff  # full jitter (1.0) may yield 0
    assert delay >= min(policy.max_backoff, initial) * (1 - jitter) - 1e-9


def test_should_retry_counts_attempts_and_honours_non_retryable() -> None:
    policy = RetryPolicy(max_attempts=3, non_retryable=["permission_denied"])
    assert policy.should_retry(1, "timeout")
    assert policy.should_retry(2, "timeout")
    assert not policy.should_retry(3, "timeout")
    assert not policy.should_retry(1, "permission_denied")
    assert not policy.should_retry(1, "expression_error")  # never retried: it cannot change
    assert not RetryPolicy(max_attempts=1).should_retry(1, "timeout")


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (3, 1.0, 60.0)
    assert (policy.multiplier, policy.jitter, policy.non_retryable) == (2.0, 0.2, [])
