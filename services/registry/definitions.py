"""The definitions registry: signed workflow versions on the compacted definitions topic.

Only definitions whose signature verifies against the tenant's keyring (from the tenants
registry) are ever returned. Three rules, checked by :class:`DefinitionCatalog`:

- **Authentic content holds a version, immutably.** The first authentic record under
  (tenant, name, version) holds it for the life of the process; a later record with different
  content is refused (``version_conflict``, as ``switchyard workflow publish`` refuses it), an
  identical one is accepted (idempotent). The table keeps the distinct records of each key
  (bounded, :data:`HISTORY_PER_VERSION`) so that a replacement is seen even between two reads.
- **Trust is checked at every use.** A definition is returned only while its signing key is
  trusted *now* (injectable clock): an expired or revoked key's definitions stop being used at
  the instant its window ends, without waiting for a registry change. Keyring changes (a key
  removed) take effect on the next read after the tenants registry changes.
- **Refusals are visible.** ``refused`` maps each refused record's key to ``"<reason>: <why>"``;
  each new refusal is logged at warning level, and ``switchyard_definitions_refused{reason}``
  counts the refused keys by reason. :meth:`DefinitionCatalog.untrusted_reason` says why a
  definition runs may use is not usable any more.

Compaction on the broker keeps only the latest record of a key: a process that starts after a
conflicting record was compacted over the original sees only the conflicting one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Producer

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import records, serde
from services.contracts.records import DefinitionRecord
from services.observability.metrics import DEFINITIONS_REFUSED
from services.registry.compacted import CompactedTable
from services.registry.trust import TrustWindow, authenticity_error, trust_window, untrusted_at
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.problems import DefinitionError
from services.workflow.signing import Reason, SignatureError, SignedDefinition

log = logging.getLogger(__name__)

HISTORY_PER_VERSION = 8
"""Distinct records kept per (tenant, name, version): the first 7 and the latest."""


def definition_key(tenant: str, name: str, version: int) -> str:
    return f"{tenant}/{name}/{version}"


@dataclass(frozen=True)
class DefinitionEntry:
    tenant: str
    signed: SignedDefinition
    published_at: int
    publisher: str


def decode_definition(key: str, value: bytes) -> DefinitionEntry:
    record = records.decode_definition_record(value)
    signed = SignedDefinition.model_validate_json(record["signed_json"])
    expected = definition_key(record["tenant"], signed.name, signed.version)
    if key != expected:
        raise ValueError(f"record key {key!r} does not match its content ({expected!r})")
    return DefinitionEntry(record["tenant"], signed, record["published_at"], record["publisher"])


def record_identity(entry: DefinitionEntry) -> tuple[str, str, str]:
    """Two records are the same publication when content, key and signature are."""
    return (entry.signed.content_hash, entry.signed.key_id, entry.signed.signature)


def definitions_table(settings: Settings) -> CompactedTable[DefinitionEntry]:
    return CompactedTable(
        settings,
        Topics(settings.topic_prefix).definitions,
        decode_definition,
        history=HISTORY_PER_VERSION,
        identity=record_identity,
    )


class DefinitionSource(Protocol):
    """What the catalog reads of the definitions table (a :class:`CompactedTable` or its table)."""

    @property
    def version(self) -> int: ...

    def histories(self) -> list[tuple[str, list[DefinitionEntry]]]: ...


class TenantSource(Protocol):
    @property
    def version(self) -> int: ...

    def get(self, key: str) -> TenantConfig | None: ...


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


WorkflowId = tuple[str, str, int]
"""(tenant, name, version)."""


@dataclass(frozen=True)
class _Usable:
    """A definition whose content holds its version and verifies; trusted while a window covers now."""

    workflow: CompiledWorkflow
    windows: tuple[TrustWindow, ...]


@dataclass
class _Snapshot:
    usable: dict[WorkflowId, _Usable]
    by_tenant: dict[str, list[list[_Usable]]]  # per workflow name, newest version first
    lost: dict[WorkflowId, str]
    refused: dict[str, str]
    refused_kinds: dict[str, str]


def _refusal(kind: str, message: str) -> tuple[str, str]:
    return kind, f"{kind}: {message}"


def _signature_refusal(exc: SignatureError) -> tuple[str, str]:
    return exc.reason.value, str(exc)


class DefinitionCatalog:
    """Verified, compiled workflows by tenant; rebuilt lazily when a registry changes.

    ``clock`` gives the current time (timezone-aware); trust is checked against it on every
    :meth:`get` and :meth:`latest_for`.
    """

    def __init__(
        self,
        definitions: DefinitionSource,
        tenants: TenantSource,
        *,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._definitions = definitions
        self._tenants = tenants
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = (-1, -1)
        self._pins: dict[str, str] = {}  # key -> content hash holding the version (sticky)
        self._compiled: dict[tuple[str, str], CompiledWorkflow] = {}  # (key, content hash)
        self._snapshot = _Snapshot({}, {}, {}, {}, {})
        self._metric_kinds: set[str] = set()

    @property
    def refused(self) -> dict[str, str]:
        """Record key -> ``"<reason>: <why>"`` of every refused record (the latest reason per key)."""
        self._refresh()
        return self._snapshot.refused

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        """The newest version of each of the tenant's workflows that is trusted now."""
        snapshot = self._current()
        now = self._clock()
        latest: list[CompiledWorkflow] = []
        for versions in snapshot.by_tenant.get(tenant, []):
            found = next((u.workflow for u in versions if any(w.covers(now) for w in u.windows)), None)
            if found is not None:
                latest.append(found)
        return latest

    def all_for(self, tenant: str) -> list[CompiledWorkflow]:
        """Every version of each of the tenant's workflows that is trusted now (runs keep the
        version they started on, so what they may wait for is in any of them)."""
        snapshot = self._current()
        now = self._clock()
        return [
            u.workflow
            for versions in snapshot.by_tenant.get(tenant, [])
            for u in versions
            if any(w.covers(now) for w in u.windows)
        ]

    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None:
        """A pinned version (runs keep the version they started on), if it is trusted now."""
        usable = self._current().usable.get((tenant, name, version))
        if usable is None:
            return None
        now = self._clock()
        return usable.workflow if any(w.covers(now) for w in usable.windows) else None

    def untrusted_reason(self, tenant: str, workflow: str, version: int) -> str | None:
        """Why a definition of the registry is not usable now (``"<reason>: <why>"``), else ``None``.

        ``None`` when it is trusted now, or when this process never saw it. Otherwise, e.g.
        ``key_expired: key 'k1' expired at …``, ``key_revoked: …``, ``key_removed: …``,
        ``tenant_removed: …``, ``definition_removed: …``, or the refusal of its record.
        """
        snapshot = self._current()
        wid = (tenant, workflow, version)
        usable = snapshot.usable.get(wid)
        if usable is not None:
            return untrusted_at(usable.windows, self._clock())
        return snapshot.lost.get(wid)

    # --- rebuilding ------------------------------------------------------------------------------

    def _current(self) -> _Snapshot:
        self._refresh()
        return self._snapshot

    def _refresh(self) -> None:
        marker = (self._definitions.version, self._tenants.version)
        if marker == self._seen:
            return
        with self._lock:
            if marker == self._seen:
                return
            previous = self._snapshot
            snapshot = self._rebuild(previous)
            self._report(previous, snapshot)
            self._snapshot, self._seen = snapshot, marker

    def _rebuild(self, previous: _Snapshot) -> _Snapshot:
        snapshot = _Snapshot({}, {}, {}, {}, {})
        pins: dict[str, str] = {}
        present: set[WorkflowId] = set()
        for key, candidates in self._definitions.histories():
            if not candidates:
                continue
            latest = candidates[-1]
            wid = (latest.tenant, latest.signed.name, latest.signed.version)
            present.add(wid)
            self._resolve(key, wid, candidates, pins, snapshot)
        # A definition deleted from the registry (tombstone) frees its version; runs on it are told.
        for wid, reason in previous.lost.items():
            if wid not in present and reason.startswith("definition_removed"):
                snapshot.lost[wid] = reason
        for wid in previous.usable:
            if wid not in present:
                _, name, version = wid
                snapshot.lost[wid] = f"definition_removed: {name} v{version} was deleted from the registry"
        self._pins = pins
        live = {(key, digest) for key, digest in pins.items()}
        self._compiled = {k: v for k, v in self._compiled.items() if k in live}
        by_name: dict[tuple[str, str], list[_Usable]] = {}
        for (tenant, name, _), usable in snapshot.usable.items():
            by_name.setdefault((tenant, name), []).append(usable)
        for (tenant, _), versions in sorted(by_name.items()):
            versions.sort(key=lambda u: u.workflow.version, reverse=True)
            snapshot.by_tenant.setdefault(tenant, []).append(versions)
        return snapshot

    def _resolve(
        self,
        key: str,
        wid: WorkflowId,
        candidates: list[DefinitionEntry],
        pins: dict[str, str],
        snapshot: _Snapshot,
    ) -> None:
        """One version: which record holds it, whether it verifies now, what is refused."""
        tenant_id = wid[0]
        was_pinned = key in self._pins
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            kind, message = _refusal("unknown_tenant", f"tenant {tenant_id!r} is not registered")
            snapshot.refused[key], snapshot.refused_kinds[key] = message, kind
            if was_pinned:
                pins[key] = self._pins[key]
                snapshot.lost[wid] = f"tenant_removed: tenant {tenant_id!r} is no longer registered"
            else:
                snapshot.lost[wid] = message
            return
        keyring = tenant.keyring_or_empty()
        pin = self._pins.get(key)
        if pin is not None and all(c.signed.content_hash != pin for c in candidates):
            pin = None  # deleted and published again since the last read: the version was freed
        conflict: DefinitionEntry | None = None
        authentic: list[DefinitionEntry] = []
        problem: SignatureError | None = None
        for entry in candidates:
            if pin is not None and entry.signed.content_hash != pin:
                conflict = entry
                continue
            error = authenticity_error(entry, keyring)
            if error is not None:
                problem = error
                continue
            pin = entry.signed.content_hash
            authentic.append(entry)
        if pin is not None:
            pins[key] = pin
        if conflict is not None:
            name, version = wid[1], wid[2]
            kind, message = _signature_refusal(
                SignatureError(
                    Reason.VERSION_CONFLICT,
                    f"{name} v{version} is already published with different content (sha256 {pin}); "
                    f"record with sha256 {conflict.signed.content_hash} ignored",
                )
            )
            snapshot.refused[key], snapshot.refused_kinds[key] = message, kind
        if not authentic:
            kind, message = (
                _signature_refusal(problem) if problem is not None else _refusal("unsigned", "no record")
            )
            if conflict is None:
                snapshot.refused[key], snapshot.refused_kinds[key] = message, kind
            if was_pinned and problem is not None and problem.reason is Reason.UNKNOWN_KEY:
                key_id = candidates[0].signed.key_id if pin is None else _key_of(candidates, pin)
                message = f"key_removed: key {key_id!r} was removed from tenant {tenant_id!r}'s keyring"
            snapshot.lost[wid] = message
            return
        try:
            workflow = self._compile(key, authentic[0])
        except DefinitionError as exc:
            kind, message = _refusal("invalid_definition", str(exc))
            snapshot.refused[key], snapshot.refused_kinds[key] = message, kind
            snapshot.lost[wid] = message
            return
        windows: list[TrustWindow] = []
        for entry in authentic:
            signing_key = keyring.get(entry.signed.key_id)
            if signing_key is not None:
                windows.append(trust_window(signing_key))
        snapshot.usable[wid] = _Usable(workflow, tuple(windows))

    def _compile(self, key: str, entry: DefinitionEntry) -> CompiledWorkflow:
        cache_key = (key, entry.signed.content_hash)
        workflow = self._compiled.get(cache_key)
        if workflow is None:
            workflow = compile_workflow(entry.signed.definition, file=key)
            self._compiled[cache_key] = workflow
        return workflow

    def _report(self, previous: _Snapshot, snapshot: _Snapshot) -> None:
        for key, message in snapshot.refused.items():
            if previous.refused.get(key) != message:
                log.warning(
                    "definition refused",
                    extra={
                        "tenant": key.split("/", 1)[0],
                        "definition": key,
                        "reason": snapshot.refused_kinds[key],
                        "error": message,
                    },
                )
        counts: dict[str, int] = {}
        for kind in snapshot.refused_kinds.values():
            counts[kind] = counts.get(kind, 0) + 1
        for kind in self._metric_kinds | counts.keys():
            DEFINITIONS_REFUSED.labels(kind).set(counts.get(kind, 0))
        self._metric_kinds |= counts.keys()


def _key_of(candidates: list[DefinitionEntry], content: str) -> str:
    return next(c.signed.key_id for c in candidates if c.signed.content_hash == content)


def publish(settings: Settings, tenant: str, signed: SignedDefinition, publisher: str) -> None:
    record: DefinitionRecord = {
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
