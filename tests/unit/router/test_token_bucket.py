"""The intake token bucket, on a fake clock."""

from __future__ import annotations

import pytest

from services.tenancy.limits import TokenBucket


def test_burst_then_steady_rate() -> None:
    bucket = TokenBucket.full(rate=10, burst=5, now=0.0)
    assert sum(bucket.try_take(0.0) for _ in range(10)) == 5
    assert bucket.wait_time(0.0) == pytest.approx(0.1)
    admitted = sum(bucket.try_take(t / 100) for t in range(1, 1001))  # 10 s polled every 10 ms
    assert admitted == pytest.approx(100, abs=1)


def test_tokens_never_exceed_burst_and_reconfigure_caps() -> None:
    bucket = TokenBucket.full(rate=100, burst=3, now=0.0)
    bucket.refill(1000.0)
    assert bucket.tokens == 3
    bucket.reconfigure(rate=1, burst=1)
    assert bucket.tokens == 1 and bucket.available(1000.0) and not bucket.available(1000.0, 2)
