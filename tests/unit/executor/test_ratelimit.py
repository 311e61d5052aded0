"""Token-bucket external-call limiter on a fake clock: rate, burst, order, deadlines, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from services.executor.ratelimit import ExternalCallLimiter, RateLimitTimeout, TokenBucket


class FakeTime:
    """A clock that only moves when a waiter sleeps (sleeps complete in wake-up order)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.throttled: list[tuple[str, float]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        wake = self.now + seconds
        while self.now < wake:  # let earlier wake-ups go first, then move time forward
            await asyncio.sleep(0)
            self.now = max(self.now, min(wake, self.now + 1e-3))
        await asyncio.sleep(0)

    def limiter(self, rates: dict[str, float | None]) -> ExternalCallLimiter:
        return ExternalCallLimiter(
            rates.get,
            clock=self.clock,
            sleep=self.sleep,
            on_throttled=lambda tenant, s: self.throttled.append((tenant, s)),
        )


def test_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=10, now=0)
    assert [bucket.reserve(0, 60) for _ in range(10)] == [0.0] * 10
    waits = [bucket.reserve(0, 60) for _ in range(5)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_bucket_refuses_a_wait_beyond_the_budget_without_taking_a_token() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0)
    assert bucket.reserve(0, 0) == 0.0
    assert bucket.reserve(0, 0.5) is None
    assert bucket.reserve(0, 1.0) == pytest.approx(1.0)


def test_bucket_refills_up_to_burst_only() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    for _ in range(3):
        bucket.reserve(0, 0)
    assert bucket.reserve(100, 0) == 0.0  # refilled after a long idle time
    assert bucket.tokens == pytest.approx(2.0)  # capped at burst (3) minus the one taken


def test_sequential_calls_hold_the_rate_within_tolerance() -> None:
    fake = FakeTime()
    limiter = fake.limiter({"acme": 20.0})

    async def main() -> list[float]:
        stamps = []
        for _ in range(120):
            await limiter.acquire("acme", 60)
            stamps.append(fake.now)
        return stamps

    stamps = asyncio.run(main())
    # burst of 20 at t=0, then 100 more at 20/s: the last call at 5.0 s.
    assert stamps[19] == 0.0
    assert stamps[-1] == pytest.approx(5.0, abs=0.01)
    for start in range(len(stamps)):  # any 1 s window holds at most burst + rate calls
        inside = [t for t in stamps if stamps[start] <= t < stamps[start] + 1.0]
        assert len(inside) <= 40
    assert sum(s for _, s in fake.throttled) > 0


def test_concurrent_callers_share_one_bucket_in_arrival_order() -> None:
    fake = FakeTime()
    limiter = fake.limiter({"acme": 10.0, "globex": 10.0})
    done: dict[str, list[tuple[int, float]]] = {"acme": [], "globex": []}

    async def call(tenant: str, i: int) -> None:
        await limiter.acquire(tenant, 60)
        done[tenant].append((i, fake.now))

    async def main() -> None:
        await asyncio.gather(*(call("acme", i) for i in range(30)), *(call("globex", i) for i in range(5)))

    asyncio.run(main())
    acme = done["acme"]
    assert [i for i, _ in acme] == list(range(30))  # FIFO
    assert acme[-1][1] == pytest.approx(2.0, abs=0.01)  # 10 at once, 20 more at 10/s
    assert max(t for _, t in done["globex"]) == 0.0  # another tenant is not held up


def test_a_wait_past_the_budget_fails_at_once() -> None:
    fake = FakeTime()
    limiter = fake.limiter({"acme": 1.0})

    async def main() -> None:
        await limiter.acquire("acme", 10)
        with pytest.raises(RateLimitTimeout) as info:
            await limiter.acquire("acme", 0.5)
        assert info.value.wait_s == pytest.approx(1.0)
        assert fake.now == 0.0  # did not wait
        assert await limiter.acquire("acme", 2) == pytest.approx(1.0)  # the refused call took nothing

    asyncio.run(main())


def test_cancelled_waiter_gives_its_token_back() -> None:
    fake = FakeTime()
    limiter = fake.limiter({"acme": 1.0})

    async def main() -> None:
        await limiter.acquire("acme", 10)  # empties the bucket
        waiter = asyncio.ensure_future(limiter.acquire("acme", 10))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter._buckets["acme"].tokens == pytest.approx(0.0, abs=0.01)

    asyncio.run(main())


def test_unlimited_tenant_and_rate_changes() -> None:
    fake = FakeTime()
    rates: dict[str, float | None] = {"acme": None}
    limiter = fake.limiter(rates)

    async def main() -> None:
        for _ in range(1000):
            assert await limiter.acquire("acme", 0) == 0.0
        rates["acme"] = 0.5  # one call per 2 s, burst 1
        assert await limiter.acquire("acme", 0) == 0.0
        assert await limiter.acquire("acme", 5) == pytest.approx(2.0)

    asyncio.run(main())
