"""Circuit breakers per (tenant, action, target): closed → open → half-open → closed.

A breaker counts *consecutive* failures of calls to one target (an HTTP host, a database, …).
After ``failure_threshold`` of them it **opens**: calls fail fast (the executor reports the
retryable error kind ``circuit_open``, so the router backs off and retries later) until
``cooldown_s`` has passed. It then lets ``half_open_max_calls`` trial calls through
(**half-open**): a success closes it, a failure opens it again for a new cooldown. Calls beyond the
trials keep failing fast while the trials are in flight.

Why not a library: purgatory (asyncio) and pybreaker read ``time.time()`` directly, so their
cooldowns cannot be tested with an injected clock, and neither reports a per-key state on its own
terms; the state machine below is small and tested in ``tests/unit/executor/test_breaker.py``.

Bounded: targets come from tenants' inputs (``http.request`` keys by URL host), so the breakers
are an LRU: at most :data:`MAX_TARGETS_PER_TENANT` per tenant (a tenant calling many hosts
evicts only its own least recently used breakers) and :data:`MAX_BREAKERS` in all. An evicted
breaker's state is forgotten: its target starts closed again on its next call. ``on_change``
sees every breaker appear, change state and disappear, so that metrics can count breakers by
state without a series per target.

Everything runs on the executor's single event loop (no awaits inside), so no lock is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

BreakerKey = tuple[str, str, str]
"""(tenant, action, target)."""

MAX_TARGETS_PER_TENANT = 256
"""Breakers one tenant keeps (one per action and target); its least recently used go first."""
MAX_BREAKERS = 10_000
"""Breakers one executor keeps across all tenants."""


class BreakerState(IntEnum):
    """A breaker's state; ``label`` is its value of the ``state`` label of the breaker metrics."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


StateChange = Callable[[BreakerKey, BreakerState | None, BreakerState | None], None]
"""``on_change(key, old, new)``: ``old`` None when the breaker is created, ``new`` None when evicted."""


@dataclass(frozen=True)
class BreakerPolicy:
    failure_threshold: int = 5
    """Consecutive failures that open the breaker."""
    cooldown_s: float = 30.0
    """How long an open breaker fails fast before letting a trial call through."""
    half_open_max_calls: int = 1
    """Trial calls allowed at once while half-open."""

    def __post_init__(self) -> None:
        if self.failure_threshold < 1 or self.cooldown_s < 0 or self.half_open_max_calls < 1:
            raise ValueError(f"invalid breaker policy {self}")


class CircuitOpenError(Exception):
    """The breaker refused the call; ``retry_after`` is the seconds until it half-opens (0: trials busy)."""

    def __init__(self, key: BreakerKey, retry_after: float) -> None:
        tenant, action, target = key
        where = f"{action} → {target}" if target else action
        super().__init__(
            f"circuit open for {where} (tenant {tenant}); next trial in {retry_after:.1f}s"
            if retry_after > 0
            else f"circuit half-open for {where} (tenant {tenant}); a trial call is in flight"
        )
        self.key = key
        self.retry_after = retry_after


@dataclass
class CircuitBreaker:
    """One breaker. Call :meth:`admit` before a call, then exactly one of the ``record_*`` methods."""

    key: BreakerKey
    policy: BreakerPolicy
    clock: Callable[[], float]
    on_change: StateChange | None = None
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trials: int = field(default=0)

    def current(self) -> BreakerState:
        """The state now (an open breaker whose cooldown has passed is reported half-open)."""
        if self.state is BreakerState.OPEN and self.clock() - self.opened_at >= self.policy.cooldown_s:
            return BreakerState.HALF_OPEN
        return self.state

    def admit(self) -> None:
        """Let the call through or raise :class:`CircuitOpenError`."""
        if self.state is BreakerState.OPEN:
            waited = self.clock() - self.opened_at
            if waited < self.policy.cooldown_s:
                raise CircuitOpenError(self.key, self.policy.cooldown_s - waited)
            self._set(BreakerState.HALF_OPEN)
        if self.state is BreakerState.HALF_OPEN:
            if self.trials >= self.policy.half_open_max_calls:
                raise CircuitOpenError(self.key, 0.0)
            self.trials += 1

    def record_success(self) -> None:
        self.failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self.trials = 0
            self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self._open()
            return
        self.failures += 1
        if self.state is BreakerState.CLOSED and self.failures >= self.policy.failure_threshold:
            self._open()

    def record_cancelled(self) -> None:
        """The call was abandoned without an outcome (shutdown): give back a trial slot."""
        if self.state is BreakerState.HALF_OPEN and self.trials > 0:
            self.trials -= 1

    def _open(self) -> None:
        self.opened_at = self.clock()
        self.trials = 0
        self.failures = 0
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        old, self.state = self.state, state
        if self.on_change is not None and old is not state:
            self.on_change(self.key, old, state)


class CircuitBreakers:
    """The breakers of one executor, created on first use per key, least recently used evicted."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: StateChange | None = None,
        max_per_tenant: int = MAX_TARGETS_PER_TENANT,
        max_total: int = MAX_BREAKERS,
    ) -> None:
        if max_per_tenant < 1 or max_total < 1:
            raise ValueError("breaker bounds must be at least 1")
        self.policy = policy or BreakerPolicy()
        self.clock = clock
        self.on_change = on_change
        self.max_per_tenant = max_per_tenant
        self.max_total = max_total
        self._breakers: OrderedDict[BreakerKey, CircuitBreaker] = OrderedDict()  # LRU first
        self._by_tenant: dict[str, OrderedDict[BreakerKey, None]] = {}

    def __len__(self) -> int:
        return len(self._breakers)

    def get(self, key: BreakerKey) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        tenant = key[0]
        if breaker is not None:
            self._breakers.move_to_end(key)
            self._by_tenant[tenant].move_to_end(key)
            return breaker
        own = self._by_tenant.setdefault(tenant, OrderedDict())
        if len(own) >= self.max_per_tenant:
            self._evict(next(iter(own)))
        if len(self._breakers) >= self.max_total:
            self._evict(next(iter(self._breakers)))
        breaker = CircuitBreaker(key, self.policy, self.clock, self.on_change)
        self._breakers[key] = breaker
        self._by_tenant.setdefault(tenant, OrderedDict())[key] = None
        if self.on_change is not None:
            self.on_change(key, None, BreakerState.CLOSED)
        return breaker

    def states(self) -> dict[BreakerKey, BreakerState]:
        return {key: breaker.current() for key, breaker in self._breakers.items()}

    def _evict(self, key: BreakerKey) -> None:
        breaker = self._breakers.pop(key)
        own = self._by_tenant[key[0]]
        del own[key]
        if not own:
            del self._by_tenant[key[0]]
        # A call in flight may still hold it: its outcome must not move the counts of a breaker
        # that is no longer counted.
        breaker.on_change = None
        if self.on_change is not None:
            self.on_change(key, breaker.state, None)
