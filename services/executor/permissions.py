"""Permission checks: an action runs only if the workflow declared, and the tenant was granted, its scopes.

The scopes an action needs are its declared ``scopes``, plus ``firm_data:write`` whenever it
``mutates_firm_data`` (so no mutating action can run without that scope, whatever it declares).
Both sets must be subsets of

- the scopes the workflow declares (``StepCommand.scopes``, signed with the definition), and
- the scopes granted to the tenant (``TenantConfig.scopes`` in the tenants registry), looked up
  through a :data:`GrantsLookup`. A lookup that returns ``None`` (tenant not in the registry) grants
  nothing: an action that needs a scope is then denied (fail closed). Passing no lookup at all
  (``grants=None``, embedding and unit tests) skips the tenant check only.

A read action (``firm.get_record``, ``firm.query``) declares ``firm_data:read`` in its ``scopes``, so
the same two checks hold for reads, before anything is read.

The hidden step of a definition's ``context:`` entry (``context.<name>``) may only run an action
that declares ``mutates = False`` (:func:`check_context_read`, error kind ``context_not_read_only``):
the context is read once and kept for replays, so it must not change anything. Validation refuses
the built-in actions that mutate; this check covers plugins, which the router cannot inspect.

A denial is the non-retryable error kind ``permission_denied``; the router records it in the run's
history, which is the audit trail, and the executor logs it at warning level with the tenant, run
and correlation id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.executor.plugins import mutates
from services.workflow.models import is_context_step

FIRM_DATA_WRITE = "firm_data:write"
FIRM_DATA_READ = "firm_data:read"

GrantsLookup = Callable[[str], frozenset[str] | None]
"""Tenant → scopes granted to it (None: tenant unknown, nothing granted)."""


class PermissionDenied(Exception):
    def __init__(self, message: str, missing: frozenset[str]) -> None:
        super().__init__(message)
        self.missing = missing


def required_scopes(action: Any) -> frozenset[str]:
    """What ``action`` needs: its scopes, plus ``firm_data:write`` if it mutates firm data."""
    needed = frozenset(getattr(action, "scopes", frozenset()))
    if getattr(action, "mutates_firm_data", False):
        needed |= {FIRM_DATA_WRITE}
    return needed


def check(action: Any, tenant: str, declared: frozenset[str], grants: GrantsLookup | None) -> None:
    """Raise :class:`PermissionDenied` unless the workflow declared and the tenant holds every scope."""
    needed = required_scopes(action)
    if not needed:
        return
    missing = needed - declared
    if missing:
        raise PermissionDenied(
            f"action {action.name!r} needs scopes {sorted(missing)} that the workflow does not declare",
            missing,
        )
    if grants is None:
        return
    granted = grants(tenant)
    if granted is None:
        raise PermissionDenied(
            f"tenant {tenant!r} is not in the tenants registry, so it holds no scopes; action "
            f"{action.name!r} needs {sorted(needed)}",
            needed,
        )
    missing = needed - granted
    if missing:
        raise PermissionDenied(
            f"tenant {tenant!r} is not granted {sorted(missing)} needed by action {action.name!r}",
            missing,
        )


class NotReadOnly(Exception):
    """A ``context:`` entry names an action that may mutate."""


def check_context_read(action: Any, step_id: str) -> None:
    """Raise :class:`NotReadOnly` when ``step_id`` reads a definition's context and ``action`` does
    not declare ``mutates = False``."""
    if is_context_step(step_id) and mutates(action):
        raise NotReadOnly(
            f"{step_id} runs action {action.name!r}, which does not declare mutates = False; a"
            " context entry is read once at run start and kept for replays, so it may only run a"
            " read action (e.g. firm.get_record, firm.query). Make it a step instead"
        )
