"""The definitions registry: signed workflow versions on the compacted definitions topic.

Only definitions whose signature verifies against the tenant's keyring (from the tenants
registry) are ever returned; verification is redone whenever either registry changes, so a
revoked key takes effect without a restart. Refusals are kept in ``refused`` with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Producer

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.registry.compacted import CompactedTable
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.problems import DefinitionError
from services.workflow.signing import SignatureError, SignedDefinition, verify_signed


def definition_key(tenant: str, name: str, version: int) -> str:
    return f"{tenant}/{name}/{version}"


@dataclass(frozen=True)
class DefinitionEntry:
    tenant: str
    signed: SignedDefinition
    published_at: int
    publisher: str


def decode_definition(key: str, value: bytes) -> DefinitionEntry:
    _, record = serde.decode(value, expected="DefinitionRecord")
    signed = SignedDefinition.model_validate_json(record["signed_json"])
    expected = definition_key(record["tenant"], signed.name, signed.version)
    if key != expected:
        raise ValueError(f"record key {key!r} does not match its content ({expected!r})")
    return DefinitionEntry(record["tenant"], signed, record["published_at"], record["publisher"])


def definitions_table(settings: Settings) -> CompactedTable[DefinitionEntry]:
    return CompactedTable(settings, Topics(settings.topic_prefix).definitions, decode_definition)


class DefinitionCatalog:
    """Verified, compiled workflows by tenant; rebuilt lazily when a registry changes."""

    def __init__(
        self, definitions: CompactedTable[DefinitionEntry], tenants: CompactedTable[TenantConfig]
    ) -> None:
        self._definitions = definitions
        self._tenants = tenants
        self._lock = threading.Lock()
        self._seen = (-1, -1)
        self._compiled: dict[tuple[str, str, int], CompiledWorkflow] = {}
        self._latest: dict[str, list[CompiledWorkflow]] = {}
        self.refused: dict[str, str] = {}

    def _refresh(self) -> None:
        marker = (self._definitions.version, self._tenants.version)
        if marker == self._seen:
            return
        with self._lock:
            if marker == self._seen:
                return
            compiled: dict[tuple[str, str, int], CompiledWorkflow] = {}
            refused: dict[str, str] = {}
            now = dt.datetime.now(dt.UTC)
            for key, entry in self._definitions.items():
                tenant = self._tenants.get(entry.tenant)
                if tenant is None:
                    refused[key] = f"unknown tenant {entry.tenant!r}"
                    continue
                try:
                    verify_signed(entry.signed, entry.tenant, tenant.keyring_or_empty(), None, now)
                    workflow = compile_workflow(entry.signed.definition, file=key)
                except (SignatureError, DefinitionError) as exc:
                    refused[key] = str(exc)
                    continue
                compiled[(entry.tenant, workflow.name, workflow.version)] = workflow
            latest: dict[tuple[str, str], CompiledWorkflow] = {}
            for (tenant_id, name, version), workflow in compiled.items():
                current = latest.get((tenant_id, name))
                if current is None or current.version < version:
                    latest[(tenant_id, name)] = workflow
            by_tenant: dict[str, list[CompiledWorkflow]] = {}
            for (tenant_id, _), workflow in sorted(latest.items()):
                by_tenant.setdefault(tenant_id, []).append(workflow)
            self._compiled, self._latest, self.refused, self._seen = compiled, by_tenant, refused, marker

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        """The newest verified version of each of the tenant's workflows."""
        self._refresh()
        return self._latest.get(tenant, [])

    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None:
        """A pinned version (runs keep the version they started on)."""
        self._refresh()
        return self._compiled.get((tenant, name, version))


def publish(settings: Settings, tenant: str, signed: SignedDefinition, publisher: str) -> None:
    record = {
        "tenant": tenant,
        "name": signed.name,
        "version": signed.version,
        "content_hash": signed.content_hash,
        "signed_json": json.dumps(signed.model_dump(mode="json")),
        "published_at": int(time.time() * 1000),
        "publisher": publisher,
    }
    producer = Producer(plain_producer_config(settings))
    producer.produce(
        Topics(settings.topic_prefix).definitions,
        key=definition_key(tenant, signed.name, signed.version),
        value=serde.encode("DefinitionRecord", record),
    )
    if producer.flush(30) != 0:
        raise RuntimeError("could not write the definition to Kafka within 30 s")
