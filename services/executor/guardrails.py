"""The executor's guardrails around one action call, and their metrics.

:class:`Guardrails` bundles what :func:`~services.executor.execute.execute_command` checks around
an action: tenant grants (:mod:`.permissions`), circuit breakers (:mod:`.breaker`) and the
per-tenant external-call rate limit (:mod:`.ratelimit`). Which actions they apply to:

- permissions — every action that needs a scope;
- circuit breaker — actions that are ``external`` or define ``target(inputs)``, keyed by
  (tenant, action, target); ``target`` defaults to ``""`` (one breaker per tenant and action).
  A call counts as a failure when it fails *retryably* (timeouts, 5xx, transport errors): a
  non-retryable failure (a 404, a validation error) means the target answered;
- rate limit — actions with ``external = True``.

Metrics (declared in :mod:`services.observability.metrics`): ``switchyard_circuit_breakers``
(breakers by tenant, action and state), ``switchyard_circuit_breaker_rejections_total``,
``switchyard_external_call_throttled_seconds_total`` and ``switchyard_permission_denied_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.executor.breaker import BreakerKey, BreakerPolicy, BreakerState, CircuitBreakers
from services.executor.permissions import GrantsLookup
from services.executor.ratelimit import ExternalCallLimiter, RateLookup
from services.observability.metrics import (
    BREAKER_REJECTIONS,
    BREAKER_STATE,
    PERMISSION_DENIED,
)
from services.observability.metrics import EXTERNAL_CALL_THROTTLED_SECONDS as THROTTLED_SECONDS


def _export_state(key: BreakerKey, old: BreakerState | None, new: BreakerState | None) -> None:
    tenant, action, _ = key  # one series per state, not per target (targets are unbounded)
    if old is not None:
        BREAKER_STATE.labels(tenant, action, old.label).dec()
    if new is not None:
        BREAKER_STATE.labels(tenant, action, new.label).inc()


def _count_throttled(tenant: str, seconds: float) -> None:
    THROTTLED_SECONDS.labels(tenant).inc(seconds)


def is_external(action: Any) -> bool:
    return getattr(action, "external", False) is True


def has_breaker(action: Any) -> bool:
    return is_external(action) or callable(getattr(action, "target", None))


def target_of(action: Any, inputs: Any) -> str:
    """The breaker target of a call: ``action.target(inputs)`` when defined, else ``""``."""
    target = getattr(action, "target", None)
    if not callable(target):
        return ""
    try:
        value = target(inputs)
    except Exception:
        return ""
    return str(value)[:200] if value else ""


@dataclass
class Guardrails:
    """What an executor enforces around actions; every part is optional."""

    grants: GrantsLookup | None = None
    breakers: CircuitBreakers | None = None
    limiter: ExternalCallLimiter | None = None

    @classmethod
    def create(
        cls,
        *,
        grants: GrantsLookup | None = None,
        external_call_rate: RateLookup | None = None,
        breaker_policy: BreakerPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> Guardrails:
        """Guardrails with metrics wired: breakers always, the rate limit when a rate lookup is given."""
        limiter = (
            ExternalCallLimiter(external_call_rate, clock=clock, on_throttled=_count_throttled)
            if external_call_rate is not None
            else None
        )
        return cls(grants, CircuitBreakers(breaker_policy, clock=clock, on_change=_export_state), limiter)


__all__ = [
    "BREAKER_REJECTIONS",
    "BREAKER_STATE",
    "PERMISSION_DENIED",
    "THROTTLED_SECONDS",
    "Guardrails",
    "has_breaker",
    "is_external",
    "target_of",
]
