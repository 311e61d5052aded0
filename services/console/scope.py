"""Who is asking and what they may see: the authenticated principal and its tenant scope (pure).

Every read in :mod:`services.console.reads` takes the principal's :attr:`Principal.readable`
tenants and filters by them in SQL, so a tenant operator's requests never return another
tenant's rows, whichever endpoint or page asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.console.models import ALL_TENANTS


@dataclass(frozen=True)
class Principal:
    """An authenticated operator: ``roles`` maps a tenant (or ``*``: all) to ``viewer``/``operator``."""

    name: str
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_global(self) -> bool:
        return ALL_TENANTS in self.roles

    @property
    def readable(self) -> frozenset[str] | None:
        """Tenants this principal may read; None means all of them."""
        return None if self.is_global else frozenset(self.roles)

    def can_read(self, tenant: str | None) -> bool:
        # Records with no tenant (e.g. a dead letter from an unparseable record) are global-only.
        return self.is_global or (tenant is not None and tenant in self.roles)

    def can_act(self, tenant: str | None) -> bool:
        if tenant is None:
            return False
        return "operator" in (self.roles.get(tenant), self.roles.get(ALL_TENANTS))
