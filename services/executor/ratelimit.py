"""Per-tenant external-call rate limit: one token bucket per tenant, shared by an executor's steps.

Each bucket refills at the tenant's ``external_call_rate`` (tokens per second, from its
``TenantConfig``) up to a burst of one second's worth (at least one token). A call *reserves* a
token: when the bucket is empty the reservation is a place in line — the token balance goes
negative and the caller sleeps until its token has refilled, so concurrent callers are served in
arrival order at exactly the rate. A caller whose turn would come after its deadline does not
queue at all (:class:`RateLimitTimeout`, reported as ``timeout``): waiting counts against the step
deadline. A caller cancelled while waiting gives its token back.

The limit is per executor process: N executors admit up to N times the rate in aggregate (the
tenant's commands spread over them by partition). Why not pyrate-limiter: it models integer
``Rate(limit, interval)`` windows (a tenant may be limited to 0.5 calls/s), serialises every
``try_acquire_async`` of a limiter behind one lock (a throttled tenant would delay the others),
and cannot report in advance that a wait would overrun the caller's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

RateLookup = Callable[[str], float | None]
"""Tenant → external calls per second (None: not limited)."""


class RateLimitTimeout(Exception):
    """The caller would have to wait longer than it has left."""

    def __init__(self, tenant: str, wait_s: float, budget_s: float) -> None:
        super().__init__(
            f"external-call rate limit of tenant {tenant}: the next call slot is {wait_s:.3f}s away, "
            f"after the step deadline ({budget_s:.3f}s left)"
        )
        self.tenant, self.wait_s, self.budget_s = tenant, wait_s, budget_s


class TokenBucket:
    """Tokens refill continuously at ``rate`` up to ``burst``; the balance may go negative (a queue)."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate, self.burst = rate, burst
        self.tokens, self.updated = burst, now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def configure(self, rate: float, burst: float, now: float) -> None:
        """Apply a changed tenant limit without losing the current balance."""
        self._refill(now)
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def reserve(self, now: float, max_wait: float) -> float | None:
        """Take a token; return the seconds until it is usable, or None (nothing taken) if > max_wait."""
        self._refill(now)
        wait = 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate
        if wait > max_wait:
            return None
        self.tokens -= 1
        return wait

    def refund(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1)


class ExternalCallLimiter:
    """The buckets of one executor, by tenant. Use from one event loop."""

    def __init__(
        self,
        rate_of: RateLookup,
        *,
        burst_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_throttled: Callable[[str, float], None] | None = None,
    ) -> None:
        self.rate_of = rate_of
        self.burst_s = burst_s
        self.clock = clock
        self.sleep = sleep
        self.on_throttled = on_throttled
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, tenant: str, rate: float, now: float) -> TokenBucket:
        burst = max(1.0, rate * self.burst_s)
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = TokenBucket(rate, burst, now)
        elif bucket.rate != rate or bucket.burst != burst:
            bucket.configure(rate, burst, now)
        return bucket

    async def acquire(self, tenant: str, budget_s: float) -> float:
        """Wait for the tenant's next external-call token; return the seconds waited.

        Raises :class:`RateLimitTimeout` at once (without waiting) if the token would come after
        ``budget_s`` seconds.
        """
        rate = self.rate_of(tenant)
        if rate is None:
            return 0.0
        now = self.clock()
        bucket = self._bucket(tenant, rate, now)
        wait = bucket.reserve(now, budget_s)
        if wait is None:
            needed = (1 - bucket.tokens) / bucket.rate
            raise RateLimitTimeout(tenant, needed, budget_s)
        if wait <= 0:
            return 0.0
        try:
            await self.sleep(wait)
        except asyncio.CancelledError:
            bucket.refund()
            raise
        if self.on_throttled is not None:
            self.on_throttled(tenant, wait)
        return wait
