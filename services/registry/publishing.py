"""Publishing a signed definition: verify against the tenant's keyring and what is already published."""

from __future__ import annotations

import datetime as dt

from services.config import Settings
from services.registry.definitions import DefinitionEntry, definitions_table, publish
from services.tenancy.admin import read_tenants
from services.workflow.signing import SignatureError, SignedDefinition, verify_signed


class PublishRefused(Exception):
    """The registry refuses the definition; the message says why and what to do."""


def read_definitions(settings: Settings) -> dict[str, DefinitionEntry]:
    table = definitions_table(settings).start()
    try:
        table.wait_caught_up(30)
        return dict(table.items())
    finally:
        table.stop()


def publish_signed(settings: Settings, signed: SignedDefinition, publisher: str) -> bool:
    """Publish; returns False when the identical version was already published (idempotent)."""
    tenant = read_tenants(settings).get(signed.tenant)
    if tenant is None:
        raise PublishRefused(
            f"tenant {signed.tenant!r} does not exist; create it with `switchyard tenant create`"
        )
    existing = read_definitions(settings)
    published = {
        (entry.signed.name, entry.signed.version): entry.signed.content_hash
        for entry in existing.values()
        if entry.tenant == signed.tenant
    }
    try:
        verify_signed(signed, signed.tenant, tenant.keyring_or_empty(), published, dt.datetime.now(dt.UTC))
    except SignatureError as exc:
        raise PublishRefused(f"{exc.reason}: {exc}") from exc
    if published.get((signed.name, signed.version)) == signed.content_hash:
        return False
    publish(settings, signed.tenant, signed, publisher)
    return True
