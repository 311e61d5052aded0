"""``firm.update_record``: create or update a record in the firm's PostgreSQL database, exactly once.

Inputs: ``record_type`` (``client``, ``document_folder``, …), ``operation`` (``create`` |
``update``), ``id`` (required for ``update``; optional for ``create``, which otherwise derives one
from the idempotency key) and ``fields`` (a JSON object; ``update`` merges it into the record's
fields). Output: ``{"id", "record_type", "operation", "version", "fields"}`` plus each field
copied to the top level when it does not clash with those keys (so a workflow can write
``steps.create_client.output.id`` or ``steps.open_folder.output.path``).

**Exactly once per idempotency key.** In one database transaction the action takes an advisory
lock on the step's idempotency key, looks the key up in ``applied_effects``, and either returns the
stored result (a repeat) or applies the mutation and stores its result under the key. So a
command delivered again — say the executor died after the database commit but before the Kafka
commit of its result — changes nothing the second time and reports the same output. The key is
``run_id:step_id:attempt``: a *retry* (a new attempt after a failure or timeout) is a new key and
therefore a new effect. A create that failed before its commit applied nothing, so retrying it is
safe; a create whose attempt committed but then *timed out* on the way back would run again as
the next attempt — workflows that cannot tolerate that pass an explicit ``id`` (then the retry
fails with ``conflict``) or use ``update``, which is naturally idempotent for the same fields.

Database: ``SWITCHYARD_FIRM_DATABASE_URL``, else ``DATABASE_URL`` (read at each call). The tables
``firm_records`` and ``applied_effects`` are created if missing. Records are keyed by
(tenant, id): a tenant never sees another's records.

Error kinds: ``not_found`` (update of a missing record or of another record type), ``conflict``
(create with an id that exists), both non-retryable; ``firm_db_unavailable`` (cannot connect or
the connection broke), retryable; ``firm_db_unconfigured`` (no URL), non-retryable.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.config import load_settings
from services.contracts.records import JsonObject
from services.executor.permissions import FIRM_DATA_WRITE
from services.executor.plugins import ActionContext, ActionError, BaseAction

FIRM_DATABASE_ENV = "SWITCHYARD_FIRM_DATABASE_URL"
SCHEMA_LOCK = 0x5357_4652  # advisory lock id serialising concurrent CREATE TABLE IF NOT EXISTS
ID_NAMESPACE = uuid.UUID("1d9a6f64-0c57-4c71-9a8e-0f3e0a9a6e11")
RESERVED_OUTPUT_KEYS = frozenset({"id", "record_type", "operation", "version", "fields"})

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS firm_records (
        tenant      text        NOT NULL,
        id          text        NOT NULL,
        record_type text        NOT NULL,
        fields      jsonb       NOT NULL DEFAULT '{}'::jsonb,
        version     integer     NOT NULL DEFAULT 1,
        created_at  timestamptz NOT NULL DEFAULT now(),
        updated_at  timestamptz NOT NULL DEFAULT now(),
        created_by  text        NOT NULL,
        updated_by  text        NOT NULL,
        PRIMARY KEY (tenant, id)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS applied_effects (
        idempotency_key text        PRIMARY KEY,
        tenant          text        NOT NULL,
        action          text        NOT NULL,
        result          jsonb       NOT NULL,
        applied_at      timestamptz NOT NULL DEFAULT now()
    )
    """,
)


class UpdateRecordInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_type: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="e.g. client, document_folder")
    operation: Literal["create", "update"]
    id: str | None = Field(default=None, min_length=1, max_length=200)
    fields: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _update_needs_id(self) -> UpdateRecordInput:
        if self.operation == "update" and self.id is None:
            raise ValueError("operation 'update' needs an id")
        return self


def firm_database_url() -> str | None:
    """``SWITCHYARD_FIRM_DATABASE_URL``, else ``DATABASE_URL``: read at each call, not cached, as the
    engine's process may learn its database after it started (the demo's local server)."""
    settings = load_settings()
    return settings.firm_database_url or settings.database_url


class UpdateRecord(BaseAction):
    """Creates or updates one firm record, exactly once per idempotency key."""

    name = "firm.update_record"
    Input = UpdateRecordInput
    scopes = frozenset({FIRM_DATA_WRITE})
    mutates_firm_data = True

    def __init__(self, database_url: str | None = None) -> None:
        self._database_url = database_url
        self._schema_ready: set[str] = set()

    def target(self, inputs: UpdateRecordInput) -> str:
        """One circuit breaker per tenant for the firm database."""
        return "firm-db"

    async def run(self, ctx: ActionContext, inputs: UpdateRecordInput, /) -> JsonObject:
        url = self._database_url or firm_database_url()
        if not url:
            raise ActionError(
                "firm_db_unconfigured", f"set {FIRM_DATABASE_ENV} or DATABASE_URL", retryable=False
            )
        try:
            conn = await psycopg.AsyncConnection.connect(url, connect_timeout=max(1, int(ctx.remaining())))
        except psycopg.OperationalError as exc:
            raise ActionError("firm_db_unavailable", f"cannot connect: {exc}") from exc
        try:
            async with conn:
                await self._ensure_schema(conn, url)
                return await _apply_once(conn, ctx, inputs)
        except psycopg.OperationalError as exc:
            raise ActionError("firm_db_unavailable", f"{type(exc).__name__}: {exc}") from exc

    async def _ensure_schema(self, conn: psycopg.AsyncConnection[Any], url: str) -> None:
        if url in self._schema_ready:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
            for statement in SCHEMA:
                await conn.execute(statement)
        self._schema_ready.add(url)


async def _apply_once(
    conn: psycopg.AsyncConnection[Any], ctx: ActionContext, inputs: UpdateRecordInput
) -> JsonObject:
    key = ctx.idempotency_key
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [key])
        cur = await conn.execute(
            "SELECT tenant, result FROM applied_effects WHERE idempotency_key = %s", [key]
        )
        stored = await cur.fetchone()
        if stored is not None:
            if stored[0] != ctx.tenant:
                raise ActionError("conflict", f"idempotency key {key} belongs to another tenant", False)
            ctx.log.info("effect already applied; returning its stored result", extra={"key": key})
            result: JsonObject = stored[1]
            return result
        if inputs.operation == "create":
            result = await _create(conn, ctx, inputs)
        else:
            result = await _update(conn, ctx, inputs)
        cur = await conn.execute(
            "INSERT INTO applied_effects (idempotency_key, tenant, action, result) VALUES (%s, %s, %s, %s)"
            " RETURNING result",
            [key, ctx.tenant, UpdateRecord.name, Jsonb(result)],
        )
        row = await cur.fetchone()
        assert row is not None
        stored_result: JsonObject = row[0]  # as stored, so that a repeat returns identical output
        return stored_result


async def _create(
    conn: psycopg.AsyncConnection[Any], ctx: ActionContext, inputs: UpdateRecordInput
) -> JsonObject:
    record_id = inputs.id or str(uuid.uuid5(ID_NAMESPACE, f"{ctx.tenant}:{ctx.idempotency_key}"))
    cur = await conn.execute(
        """
        INSERT INTO firm_records (tenant, id, record_type, fields, created_by, updated_by)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (tenant, id) DO NOTHING
        RETURNING version, fields
        """,
        [
            ctx.tenant,
            record_id,
            inputs.record_type,
            Jsonb(inputs.fields),
            ctx.idempotency_key,
            ctx.idempotency_key,
        ],
    )
    row = await cur.fetchone()
    if row is None:
        raise ActionError("conflict", f"{inputs.record_type} {record_id} already exists", retryable=False)
    return _output(record_id, inputs, row[0], row[1])


async def _update(
    conn: psycopg.AsyncConnection[Any], ctx: ActionContext, inputs: UpdateRecordInput
) -> JsonObject:
    cur = await conn.execute(
        """
        UPDATE firm_records
           SET fields = fields || %s, version = version + 1, updated_at = now(), updated_by = %s
         WHERE tenant = %s AND id = %s AND record_type = %s
        RETURNING version, fields
        """,
        [Jsonb(inputs.fields), ctx.idempotency_key, ctx.tenant, inputs.id, inputs.record_type],
    )
    row = await cur.fetchone()
    if row is None:
        raise ActionError("not_found", f"no {inputs.record_type} with id {inputs.id}", retryable=False)
    assert inputs.id is not None
    return _output(inputs.id, inputs, row[0], row[1])


def _output(record_id: str, inputs: UpdateRecordInput, version: int, fields: Any) -> JsonObject:
    fields = fields if isinstance(fields, dict) else json.loads(fields)
    output = {k: v for k, v in fields.items() if k not in RESERVED_OUTPUT_KEYS}
    output.update(
        {
            "id": record_id,
            "record_type": inputs.record_type,
            "operation": inputs.operation,
            "version": version,
            "fields": fields,
        }
    )
    return output
