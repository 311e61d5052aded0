"""Builders shared by the registry unit tests: signed records, keys, tables fed by hand, a clock."""

from __future__ import annotations

import datetime as dt

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.registry.compacted import KeyedValues
from services.registry.definitions import (
    HISTORY_PER_VERSION,
    DefinitionCatalog,
    DefinitionEntry,
    definition_key,
    record_identity,
)
from services.tenancy.config import TenantConfig
from services.workflow import WorkflowDefinition, sign_definition
from services.workflow.signing import KeyEntry, Keyring, public_key_b64

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
KEY_A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_B = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


def definition(version: int = 1, action: str = "echo", name: str = "chain") -> WorkflowDefinition:
    return WorkflowDefinition.model_validate(
        {
            "name": name,
            "version": version,
            "trigger": {"event": "go"},
            "steps": [{"id": "a", "action": action}],
        }
    )


def entry(
    version: int = 1, action: str = "echo", *, key: Ed25519PrivateKey = KEY_A, key_id: str = "k1",
    name: str = "chain", signature: str | None = None,
) -> DefinitionEntry:  # fmt: skip
    signed = sign_definition(definition(version, action, name), tenant="acme", key_id=key_id, private_key=key)
    if signature is not None:
        signed = signed.model_copy(update={"signature": signature})
    return DefinitionEntry("acme", signed, published_at=0, publisher="tests")


def key(private: Ed25519PrivateKey = KEY_A, key_id: str = "k1", **window: dt.datetime) -> KeyEntry:
    return KeyEntry(key_id=key_id, public_key=public_key_b64(private), **window)


class Registry:
    """The two tables a router reads, and a catalog over them."""

    def __init__(self, *keys: KeyEntry) -> None:
        self.definitions: KeyedValues[DefinitionEntry] = KeyedValues(
            history=HISTORY_PER_VERSION, identity=record_identity
        )
        self.tenants: KeyedValues[TenantConfig] = KeyedValues()
        self.clock = Clock()
        self.set_keys(*keys)
        self.catalog = DefinitionCatalog(self.definitions, self.tenants, clock=self.clock)

    def set_keys(self, *keys: KeyEntry) -> None:
        self.tenants.put("acme", TenantConfig(tenant="acme", keyring=Keyring(tenant="acme", keys=list(keys))))

    def publish(self, e: DefinitionEntry) -> None:
        self.definitions.put(definition_key(e.tenant, e.signed.name, e.signed.version), e)

    def steps(self, version: int = 1) -> list[str] | None:
        workflow = self.catalog.get("acme", "chain", version)
        return None if workflow is None else [s.action or s.kind for s in workflow.definition.steps]
