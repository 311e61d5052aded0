"""Publishing a signed definition: verify against the tenant's keyring and what is already published.

"Already published" is decided as the readers decide it (:mod:`services.registry.trust`): the
first authentic record of a version holds it, so publishing and the routers agree on which
content a version has, also when a conflicting record was written to the topic directly.
"""

from __future__ import annotations

import datetime as dt

from services.config import Settings
from services.registry.definitions import DefinitionEntry, definitions_table, publish
from services.registry.trust import content_holder, published_hashes
from services.tenancy.admin import read_tenants
from services.workflow.signing import SignatureError, SignedDefinition, verify_signed
from services.workflow.validation import step_timeout_problems


class PublishRefused(Exception):
    """The registry refuses the definition; the message says why and what to do."""


def read_definition_histories(settings: Settings) -> dict[str, list[DefinitionEntry]]:
    """Every definition record key with its distinct records, in arrival order."""
    table = definitions_table(settings).start()
    try:
        table.wait_caught_up(30)
        return dict(table.histories())
    finally:
        table.stop()


def read_definitions(settings: Settings) -> dict[str, DefinitionEntry]:
    """The record that holds each published version (its first authentic one, else its latest)."""
    histories = read_definition_histories(settings)
    tenants = read_tenants(settings)
    held: dict[str, DefinitionEntry] = {}
    for key, candidates in histories.items():
        tenant = tenants.get(candidates[-1].tenant)
        keyring = tenant.keyring_or_empty() if tenant is not None else None
        held[key] = content_holder(candidates, keyring) or candidates[-1]
    return held


def publish_signed(settings: Settings, signed: SignedDefinition, publisher: str) -> bool:
    """Publish; returns False when the identical version was already published (idempotent)."""
    tenant = read_tenants(settings).get(signed.tenant)
    if tenant is None:
        raise PublishRefused(
            f"tenant {signed.tenant!r} does not exist; create it with `switchyard tenant create`"
        )
    too_long = step_timeout_problems(signed.definition, settings.max_step_timeout_s, file=signed.name)
    if too_long:
        raise PublishRefused("; ".join(str(problem) for problem in too_long))
    keyring = tenant.keyring_or_empty()
    published = published_hashes(read_definition_histories(settings), signed.tenant, keyring)
    try:
        verify_signed(signed, signed.tenant, keyring, published, dt.datetime.now(dt.UTC))
    except SignatureError as exc:
        raise PublishRefused(str(exc)) from exc  # "<reason>: <why>", as the readers word it
    if published.get((signed.name, signed.version)) == signed.content_hash:
        return False
    publish(settings, signed.tenant, signed, publisher)
    return True
