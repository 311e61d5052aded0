"""Token bucket for a tenant's trigger rate: pure, with the clock passed in.

Kept here rather than taken from a rate-limiting library because intake needs one thing those
libraries do not expose cleanly: *when* the next token will be there, to pause a tenant's
partitions and resume them at that moment, instead of blocking or rejecting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float  # bucket size
    tokens: float
    updated: float  # clock reading (seconds) of the last refill

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def try_take(self, now: float, n: float = 1.0) -> bool:
        self.refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def available(self, now: float, n: float = 1.0) -> bool:
        self.refill(now)
        return self.tokens >= n

    def wait_time(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0 if they already are)."""
        self.refill(now)
        return 0.0 if self.tokens >= n else (n - self.tokens) / self.rate

    def reconfigure(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)
