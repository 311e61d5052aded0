"""The JSON bodies the ``/v1`` API answers with, as ``TypedDict``s mypy checks field by field.

They type the handlers of :mod:`services.console.api` only: FastAPI still serialises every
response as the JSON object it is (each route says ``response_model=JsonObject``), so naming a
shape here neither validates nor filters a response nor changes the OpenAPI document. Rows read
from the projection (a run with its timeline, a dead letter, a command's decision) keep the
projection's columns (:func:`services.projector.queries.as_dict`) and stay :data:`JsonObject`.
"""

from __future__ import annotations

from typing import TypedDict

from services.contracts.records import JsonObject
from services.control.commands import Kind


class Me(TypedDict):
    name: str
    roles: dict[str, str]


class RunsPage(TypedDict):
    runs: list[JsonObject]
    next_cursor: str | None


class DagNode(TypedDict):
    step_id: str
    needs: list[str]


class CommandSent(TypedDict):
    """A control command produced; its decision is read back at ``outcome_url``."""

    command_id: str
    kind: Kind
    run_id: str
    tenant: str
    requester: str
    outcome_url: str


class BulkReplaySummary(TypedDict):
    runs: int
    failed_steps: int
    run_ids: list[str]
    dry_run: bool


class BulkReplaySent(BulkReplaySummary):
    correlation_id: str
    command_ids: list[str]


class DeadLettersPage(TypedDict):
    dead_letters: list[JsonObject]
    next_cursor: str | None


class TenantView(TypedDict):
    tenant: str
    status: str
    config: JsonObject
    updated_at: str


class TenantsPage(TypedDict):
    tenants: list[TenantView]


class TenantUsage(TypedDict):
    in_flight: int
    pending: int
    by_state: dict[str, int]


class TenantDetail(TenantView):
    usage: TenantUsage
    recent_failures: list[JsonObject]
    grafana_url: str


class DefinitionSummary(TypedDict):
    tenant: str
    name: str
    version: int
    steps: int
    trigger_event: str
    key_id: str
    published_at: int
    publisher: str


class DefinitionsPage(TypedDict):
    definitions: list[DefinitionSummary]


class DefinitionView(TypedDict):
    tenant: str
    published_at: int
    publisher: str
    key_id: str
    content_hash: str
    definition: JsonObject


class TriggerAccepted(TypedDict):
    tenant: str
    topic: str
    partition: int
    offset: int
    idempotency_key: str
