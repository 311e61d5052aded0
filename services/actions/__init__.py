"""Built-in actions: ``noop``, ``echo``, ``sleep``, ``fail``, ``http.request``, ``firm.update_record``,
``firm.get_record`` and ``firm.query``.

They double as examples of the plugin interface (:mod:`services.executor.plugins`).
"""

from __future__ import annotations

from services.actions.basic import Echo, Fail, Noop, Sleep
from services.actions.firm import GetRecord, Query, UpdateRecord
from services.actions.http import HttpRequest
from services.executor.plugins import Action


def builtin_actions() -> list[Action]:
    """Fresh instances of every built-in action."""
    return [Noop(), Echo(), Sleep(), Fail(), HttpRequest(), UpdateRecord(), GetRecord(), Query()]


__all__ = [
    "Echo",
    "Fail",
    "GetRecord",
    "HttpRequest",
    "Noop",
    "Query",
    "Sleep",
    "UpdateRecord",
    "builtin_actions",
]
