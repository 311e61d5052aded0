"""The versioned JSON API under ``/v1`` (OpenAPI at ``/v1/openapi.json``, docs at ``/v1/docs``).

Every read is limited to the caller's tenants in SQL (see :mod:`services.console.reads`); runs and
dead letters of other tenants answer 404, exactly like unknown ones, so their existence does not
leak. Replay and cancel need the ``operator`` role on the run's tenant and produce control commands;
their outcome is read back at ``/v1/commands/{id}``.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from services.console import present, reads
from services.console.accounts import trigger_token_matches
from services.console.actions import DeliveryFailed
from services.console.auth import ApiPrincipal, State, refusal
from services.console.dag import Node
from services.console.responses import (
    BulkReplaySent,
    BulkReplaySummary,
    CommandSent,
    DagNode,
    DeadLettersPage,
    DefinitionsPage,
    DefinitionView,
    Me,
    RunsPage,
    TenantDetail,
    TenantsPage,
    TenantView,
    TriggerAccepted,
)
from services.console.scope import Principal
from services.contracts.records import JsonObject
from services.contracts.strict_json import StrictJSONError, loads
from services.control.commands import Kind
from services.projector.models import TenantRow
from services.projector.queries import as_dict, control_outcome, failed_runs, parse_since

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1")
# Routes name their response_model: FastAPI would otherwise take the TypedDict a handler returns
# (see .responses) as one, validating and filtering every response; they stay JSON objects.
AS_OBJECT = JsonObject
# A trigger's envelope (event type, key, correlation id) on top of its data.
ENVELOPE_BYTES = 8 * 1024


def _when(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise refusal(422, "bad_time", f"{name}: {exc}") from None


def run_filter(
    tenant: str | None = None,
    workflow: str | None = None,
    version: Annotated[str | None, Query(description="Workflow version (an integer)")] = None,
    state: Annotated[str | None, Query(description=f"One of {', '.join(reads.RUN_STATES)}")] = None,
    error_kind: str | None = None,
    created_from: Annotated[
        str | None, Query(description="ISO 8601, or a duration ago (`90m`, `2d`)")
    ] = None,
    created_to: Annotated[str | None, Query(description="ISO 8601, or a duration ago (exclusive)")] = None,
    correlation_id: str | None = None,
    idempotency_key: str | None = None,
) -> reads.RunFilter:
    """The runs filters; an empty value (as an HTML form sends it) means no filter."""

    def given(value: str | None) -> str | None:
        return value if value not in (None, "") else None

    number = None
    if given(version) is not None:
        try:
            number = int(str(version))
        except ValueError:
            raise refusal(422, "bad_filter", f"version: {version!r} is not an integer") from None
    if given(state) is not None and state not in reads.RUN_STATES:
        raise refusal(422, "bad_filter", f"state: {state!r} is not one of {', '.join(reads.RUN_STATES)}")
    return reads.RunFilter(
        tenant=given(tenant),
        workflow=given(workflow),
        version=number,
        state=given(state),
        error_kind=given(error_kind),
        created_from=_when(given(created_from), "created_from"),
        created_to=_when(given(created_to), "created_to"),
        correlation_id=given(correlation_id),
        idempotency_key=given(idempotency_key),
    )


Filter = Annotated[reads.RunFilter, Depends(run_filter)]


@router.get("/me", response_model=AS_OBJECT, summary="The authenticated operator and its roles")
def me(principal: ApiPrincipal) -> Me:
    return {"name": principal.name, "roles": dict(principal.roles)}


@router.get(
    "/runs", response_model=AS_OBJECT, summary="Runs, newest first, filtered; keyset-paginated with `cursor`"
)
def runs(
    state_: State,
    principal: ApiPrincipal,
    f: Filter,
    limit: Annotated[int, Query(ge=1, le=reads.MAX_PAGE)] = 50,
    cursor: str | None = None,
) -> RunsPage:
    with state_.session() as session:
        try:
            rows, next_cursor = reads.list_runs(session, principal.readable, f, limit, cursor)
        except ValueError as exc:
            raise refusal(422, "bad_cursor", str(exc)) from None
    return {"runs": [present.run_summary(r) for r in rows], "next_cursor": next_cursor}


@router.get("/runs/counts", summary="Runs per state under the same filters (state ignored)")
def run_counts(state_: State, principal: ApiPrincipal, f: Filter) -> dict[str, int]:
    with state_.session() as session:
        return reads.state_counts(session, principal.readable, f)


def _definition_nodes(state_: State, tenant: str, workflow: str, version: int) -> list[Node] | None:
    entry = state_.definition(tenant, workflow, version)
    if entry is None:
        return None
    return [Node(s.id, tuple(s.needs)) for s in entry.signed.definition.steps]


@router.get(
    "/runs/{run_id}",
    response_model=AS_OBJECT,
    summary="One run: steps, attempts, events, control decisions, DAG",
)
def run(run_id: str, state_: State, principal: ApiPrincipal) -> JsonObject:
    with state_.session() as session:
        found = reads.timeline(session, principal.readable, run_id)
    if found is None:
        raise refusal(404, "unknown_run", f"no run {run_id!r} that you may see")
    out = present.run_detail(found)
    nodes = _definition_nodes(state_, found.run.tenant, found.run.workflow, found.run.version)
    dag: list[DagNode] | None = (
        None if nodes is None else [{"step_id": n.step_id, "needs": list(n.needs)} for n in nodes]
    )
    out["dag"] = dag
    return out


class ReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)
    from_step: str | None = Field(None, description="Replay this step and everything downstream.")
    step_only: bool = Field(False, description="With from_step: replay only that step.")


class CancelBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000)


def act(
    state_: State, principal: Principal, run_id: str, kind: Kind, reason: str, step_id: str | None = None
) -> CommandSent:
    """Send one control command about ``run_id`` as ``principal``, after the console's own checks."""
    with state_.session() as session:
        tenant = reads.run_tenant(session, principal.readable, run_id)
    if tenant is None:
        raise refusal(404, "unknown_run", f"no run {run_id!r} that you may see")
    if not principal.can_act(tenant):
        raise refusal(403, "forbidden", f"{principal.name} may not act on tenant {tenant}'s runs")
    try:
        cmd = state_.gateway.control(kind, tenant, run_id, principal.name, reason, step_id=step_id)
    except DeliveryFailed as exc:
        raise refusal(503, "kafka_unavailable", str(exc)) from None
    log.info(
        "control command sent",
        extra={"tenant": tenant, "run_id": run_id, "correlation_id": cmd["correlation_id"], "kind": kind},
    )
    return {
        "command_id": cmd["command_id"],
        "kind": kind,
        "run_id": run_id,
        "tenant": tenant,
        "requester": principal.name,
        "outcome_url": f"/v1/commands/{cmd['command_id']}",
    }


@router.post(
    "/runs/{run_id}/replay",
    status_code=202,
    response_model=AS_OBJECT,
    summary="Replay a run (failed steps, from a step, or one step)",
)
def replay(run_id: str, body: ReplayBody, state_: State, principal: ApiPrincipal) -> CommandSent:
    if body.step_only and not body.from_step:
        raise refusal(422, "bad_request", "step_only needs from_step")
    kind: Kind = "replay_step" if body.step_only else "replay_run"
    return act(state_, principal, run_id, kind, body.reason, body.from_step)


@router.post(
    "/runs/{run_id}/cancel",
    status_code=202,
    response_model=AS_OBJECT,
    summary="Cancel a pending or running run",
)
def cancel(run_id: str, body: CancelBody, state_: State, principal: ApiPrincipal) -> CommandSent:
    return act(state_, principal, run_id, "cancel", body.reason)


class BulkReplayBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str
    reason: str = Field(min_length=1, max_length=2000)
    workflow: str | None = None
    version: int | None = None
    error_kind: str | None = None
    created_from: str | None = Field(None, description="ISO 8601 or a duration ago (`6h`).")
    dry_run: bool = True
    max_runs: int = Field(10_000, ge=1, le=100_000, description="Refuse when more runs match.")


@router.post(
    "/replays",
    response_model=Any,
    summary="Replay the failed runs matching a filter (dry run by default)",
)
def bulk_replay(
    body: BulkReplayBody, state_: State, principal: ApiPrincipal
) -> BulkReplaySummary | BulkReplaySent:
    if not principal.can_read(body.tenant):
        raise refusal(404, "unknown_tenant", f"no tenant {body.tenant!r} that you may see")
    if not body.dry_run and not principal.can_act(body.tenant):
        raise refusal(403, "forbidden", f"{principal.name} may not act on tenant {body.tenant}'s runs")
    since = _when(body.created_from, "created_from")
    with state_.session() as session:
        matched = failed_runs(session, body.tenant, body.workflow, body.version, body.error_kind, since=since)
    summary: BulkReplaySummary = {
        "runs": len(matched),
        "failed_steps": sum(len(steps) for _, steps in matched),
        "run_ids": [r for r, _ in matched[:100]],
        "dry_run": body.dry_run,
    }
    if body.dry_run or not matched:
        return summary
    if len(matched) > body.max_runs:
        raise refusal(422, "too_many", f"{len(matched)} runs match, more than max_runs={body.max_runs}")
    try:
        bulk_id, ids = state_.gateway.bulk_replay(
            body.tenant, [r for r, _ in matched], principal.name, body.reason
        )
    except DeliveryFailed as exc:
        raise refusal(503, "kafka_unavailable", str(exc)) from None
    return {**summary, "correlation_id": bulk_id, "command_ids": ids}


@router.get(
    "/commands/{command_id}", response_model=AS_OBJECT, summary="The router's decision on a control command"
)
def command_outcome(command_id: str, state_: State, principal: ApiPrincipal) -> JsonObject:
    with state_.session() as session:
        row = control_outcome(session, command_id)
    if row is None or not principal.can_read(row.tenant):
        raise refusal(404, "no_decision", f"no decision recorded (yet) for command {command_id!r}")
    return as_dict(row)


@router.get(
    "/dead-letters",
    response_model=AS_OBJECT,
    summary="Dead letters, newest first; keyset-paginated with `cursor`",
)
def dead_letters(
    state_: State,
    principal: ApiPrincipal,
    tenant: str | None = None,
    error_kind: str | None = None,
    service: str | None = None,
    run_id: str | None = None,
    failed_from: str | None = None,
    failed_to: str | None = None,
    limit: Annotated[int, Query(ge=1, le=reads.MAX_PAGE)] = 50,
    cursor: str | None = None,
) -> DeadLettersPage:
    f = reads.DeadLetterFilter(
        tenant, error_kind, service, run_id, _when(failed_from, "failed_from"), _when(failed_to, "failed_to")
    )
    with state_.session() as session:
        try:
            rows, next_cursor = reads.list_dead_letters(session, principal.readable, f, limit, cursor)
        except ValueError as exc:
            raise refusal(422, "bad_cursor", str(exc)) from None
    return {"dead_letters": [present.dead_letter_summary(r) for r in rows], "next_cursor": next_cursor}


@router.get(
    "/dead-letters/{dlq_id}",
    response_model=AS_OBJECT,
    summary="One dead letter with its (redacted) original record",
)
def dead_letter(dlq_id: str, state_: State, principal: ApiPrincipal) -> JsonObject:
    with state_.session() as session:
        row = reads.dead_letter(session, principal.readable, dlq_id)
    if row is None:
        raise refusal(404, "unknown_dead_letter", f"no dead letter {dlq_id!r} that you may see")
    return present.dead_letter_detail(row)


def tenant_view(row: TenantRow) -> TenantView:
    config = dict(row.config)
    config.pop("keyring", None)  # public keys: not secret, but not an operator's concern here
    return {
        "tenant": row.tenant,
        "status": row.status,
        "config": config,
        "updated_at": row.updated_at.isoformat(),
    }


@router.get(
    "/tenants", response_model=AS_OBJECT, summary="Tenants (as mirrored from the registry) with their limits"
)
def tenants(state_: State, principal: ApiPrincipal) -> TenantsPage:
    with state_.session() as session:
        rows = reads.list_tenants(session, principal.readable)
    return {"tenants": [tenant_view(r) for r in rows]}


@router.get(
    "/tenants/{tenant}",
    response_model=AS_OBJECT,
    summary="One tenant: limits, in-flight and pending runs, recent failures",
)
def tenant(tenant: str, state_: State, principal: ApiPrincipal) -> TenantDetail:
    with state_.session() as session:
        usage = reads.tenant_usage(session, principal.readable, tenant)
    if usage is None:
        raise refusal(404, "unknown_tenant", f"no tenant {tenant!r} that you may see")
    return {
        **tenant_view(usage.tenant),
        "usage": {"in_flight": usage.in_flight, "pending": usage.pending, "by_state": usage.counts},
        "recent_failures": [present.run_summary(r) for r in usage.recent_failures],
        "grafana_url": grafana_link(state_, tenant),
    }


def grafana_link(state_: State, tenant: str) -> str:
    from urllib.parse import quote

    base = state_.console.grafana_url.rstrip("/")
    return f"{base}/d/switchyard-tenant/switchyard-tenant?var-tenant={quote(tenant)}"


@router.get(
    "/definitions", response_model=AS_OBJECT, summary="Workflow definitions and versions from the registry"
)
def definitions(state_: State, principal: ApiPrincipal, tenant: str | None = None) -> DefinitionsPage:
    if state_.definitions is None:
        raise refusal(503, "registry_unavailable", state_.definitions_error or "registry not loaded")
    entries = [e for e in state_.definition_entries(principal.readable) if tenant in (None, e.tenant)]
    return {
        "definitions": [
            {
                "tenant": e.tenant,
                "name": e.signed.name,
                "version": e.signed.version,
                "steps": len(e.signed.definition.steps),
                "trigger_event": e.signed.definition.trigger.event,
                "key_id": e.signed.key_id,
                "published_at": e.published_at,
                "publisher": e.publisher,
            }
            for e in entries
        ]
    }


@router.get(
    "/definitions/{tenant}/{name}/{version}",
    response_model=AS_OBJECT,
    summary="One definition version (as signed)",
)
def definition(
    tenant: str, name: str, version: int, state_: State, principal: ApiPrincipal
) -> DefinitionView:
    entry = state_.definition(tenant, name, version) if principal.can_read(tenant) else None
    if entry is None:
        raise refusal(404, "unknown_definition", f"no definition {tenant}/{name}/{version} that you may see")
    return {
        "tenant": entry.tenant,
        "published_at": entry.published_at,
        "publisher": entry.publisher,
        "key_id": entry.signed.key_id,
        "content_hash": entry.signed.content_hash,
        "definition": entry.signed.definition.model_dump(mode="json"),
    }


class TriggerBody(BaseModel):
    """A trigger event, as a tenant app would produce it to its trigger topic."""

    model_config = ConfigDict(extra="forbid")
    event_type: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")
    data: Any = Field(default_factory=dict, description="The business payload (any JSON).")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=512, description="Or the Idempotency-Key header; default: a new UUID."
    )
    correlation_id: str | None = Field(None, min_length=1, max_length=200)


@router.post(
    "/tenants/{tenant}/triggers",
    status_code=202,
    response_model=AS_OBJECT,
    summary="Webhook: produce a trigger to the tenant's trigger topic (tenant token)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TriggerBody.model_json_schema()}},
        },
        "security": [{"HTTPBearer": []}],
    },
)
async def trigger(tenant: str, request: Request, state_: State) -> TriggerAccepted:
    limit = state_.settings.max_trigger_bytes + ENVELOPE_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise refusal(413, "oversized", f"body of {declared} bytes is over the limit of {limit}")
    auth = request.headers.get("authorization", "")
    scheme, _, presented = auth.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise unauthenticated("send Authorization: Bearer <tenant trigger token>")
    with state_.session() as session:
        row = session.get(TenantRow, tenant)
        if row is None:
            raise refusal(404, "unknown_tenant", f"no tenant {tenant!r}")
        if not trigger_token_matches(session, presented.strip(), tenant):
            raise refusal(403, "bad_token", f"not a live trigger token of tenant {tenant!r}")
    if row.status != "active":
        raise refusal(409, "tenant_suspended", f"tenant {tenant!r} is {row.status}")
    body = await _bounded_body(request, limit)
    try:
        parsed = loads(body, "the request body")
    except StrictJSONError as exc:
        raise refusal(400, exc.kind, str(exc)) from None
    try:
        event = TriggerBody.model_validate(parsed)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise refusal(422, "bad_body", f"{where}: {first['msg']}") from None
    data_json = orjson.dumps(event.data).decode()
    if len(data_json.encode()) > state_.settings.max_trigger_bytes:
        raise refusal(
            413, "oversized", f"data is over {state_.settings.max_trigger_bytes} bytes once encoded"
        )
    key = event.idempotency_key or request.headers.get("idempotency-key") or str(uuid.uuid4())
    if len(key) > 512:
        raise refusal(422, "bad_body", "the idempotency key is longer than 512 characters")
    try:
        receipt = await run_in_threadpool(
            state_.gateway.trigger, tenant, event.event_type, data_json, key, event.correlation_id
        )
    except DeliveryFailed as exc:
        raise refusal(503, "kafka_unavailable", str(exc)) from None
    log.info("webhook trigger accepted", extra={"tenant": tenant, "correlation_id": event.correlation_id})
    return {
        "tenant": tenant,
        "topic": receipt.topic,
        "partition": receipt.partition,
        "offset": receipt.offset,
        "idempotency_key": receipt.idempotency_key,
    }


def unauthenticated(message: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail={"error": "unauthenticated", "message": message},
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _bounded_body(request: Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes (a chunked or lying sender is cut off with a 413)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise refusal(413, "oversized", f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
