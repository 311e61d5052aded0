"""The firm's records: ``firm.update_record`` (write, exactly once) and ``firm.get_record`` /
``firm.query`` (reads), over one PostgreSQL table.

**firm.update_record** creates or updates a record, exactly once per idempotency key.

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

**Reads** need the scope ``firm_data:read`` (declared by the workflow and granted to the tenant,
checked by the executor before anything is read) and declare ``mutates = False``, so a
definition's ``context:`` may use them. Each runs in a ``READ ONLY`` transaction with a
``statement_timeout`` (``SWITCHYARD_FIRM_STATEMENT_TIMEOUT_MS``, cut to the attempt's deadline),
parameterised statements only, and always ``WHERE tenant = <the command's tenant>``. Reads never
create the tables (the database may be a replica, the role read-only): none yet means no records.

* ``firm.get_record`` — inputs ``record_type``, ``id``, ``missing_ok`` (default false). Output as
  ``firm.update_record``'s (``id``, ``record_type``, ``version``, ``fields``, each field also at the
  top level when it does not clash) plus ``found: true``; a missing record (or one of another
  type) fails ``not_found``, or with ``missing_ok`` returns ``{"found": false, ...}``.
* ``firm.query`` — inputs ``record_type``, ``where`` (at most 16 field name -> scalar, all must
  equal: JSON equality, so ``1`` matches ``1.0``; ``null`` matches an explicit null) and ``limit``
  (default 100, at most ``SWITCHYARD_FIRM_QUERY_MAX_ROWS``, default 500, else ``invalid_input``).
  Output ``{"record_type", "records": [{"id", "version", "fields"}], "count", "truncated"}``, by id
  ascending (deterministic); ``truncated`` is true when more records matched than ``limit``.

Both are bounded in bytes: a result whose JSON passes ``SWITCHYARD_FIRM_READ_MAX_BYTES`` (default
128 KiB) fails ``result_too_large``, not retried — a bounded *limit* is the author's choice and is
reported (``truncated``), but data silently cut by size would mislead the steps that read it. The
database stops sending rows once the running size passes the bound, so memory stays bounded too.

Error kinds: ``not_found`` (update of a missing record or of another record type), ``conflict``
(create with an id that exists), ``result_too_large``, ``invalid_input``, all non-retryable;
``firm_db_unavailable`` (cannot connect, the connection broke, the statement timed out), retryable;
``firm_db_unconfigured`` (no URL), non-retryable.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from services.config import Settings, load_settings
from services.contracts import strict_json
from services.contracts.records import JsonObject
from services.contracts.vocabulary import ErrorKind
from services.executor.permissions import FIRM_DATA_READ, FIRM_DATA_WRITE
from services.executor.plugins import ActionContext, ActionError, BaseAction

T = TypeVar("T")
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


class _FirmDatabase(BaseAction):
    """What the firm actions share: the database URL, one connection per attempt, the schema."""

    def __init__(self, database_url: str | None = None) -> None:
        self._database_url = database_url
        self._schema_ready: set[str] = set()

    def target(self, inputs: BaseModel) -> str:
        """One circuit breaker per tenant for the firm database."""
        return "firm-db"

    async def _with_connection(
        self,
        ctx: ActionContext,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
        *,
        create_schema: bool = True,
    ) -> T:
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
                if create_schema:
                    await self._ensure_schema(conn, url)
                return await work(conn)
        except psycopg.errors.QueryCanceled as exc:
            raise ActionError(
                "firm_db_unavailable", f"the statement ran past its statement_timeout: {exc}"
            ) from exc
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


class UpdateRecord(_FirmDatabase):
    """Creates or updates one firm record, exactly once per idempotency key."""

    name = "firm.update_record"
    Input = UpdateRecordInput
    scopes = frozenset({FIRM_DATA_WRITE})
    mutates_firm_data = True

    async def run(self, ctx: ActionContext, inputs: UpdateRecordInput, /) -> JsonObject:
        return await self._with_connection(ctx, lambda conn: _apply_once(conn, ctx, inputs))


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


# --- reads ---------------------------------------------------------------------------------------

RecordType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
FieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")]
#: Most equality filters of one ``firm.query``.
MAX_FILTERS = 16
#: ``firm.query``'s ``limit`` when the step gives none (lowered to the deployment's maximum).
DEFAULT_QUERY_LIMIT = 100
GET_RESERVED_KEYS = RESERVED_OUTPUT_KEYS | {"found"}


class GetRecordInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_type: RecordType = Field(description="e.g. client, engagement")
    id: str = Field(min_length=1, max_length=200)
    missing_ok: bool = Field(
        default=False, description="Return {found: false} for a missing record instead of failing not_found."
    )


class QueryInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    record_type: RecordType = Field(description="e.g. client, engagement")
    where: dict[FieldName, str | int | float | bool | None] = Field(
        default_factory=dict,
        max_length=MAX_FILTERS,
        description="Field name -> value; a record matches when every field equals its value.",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        description="Most records returned (default 100; at most SWITCHYARD_FIRM_QUERY_MAX_ROWS).",
    )


class _FirmRead(_FirmDatabase):
    """A read: ``firm_data:read``, no mutation, bounded rows, bytes and time."""

    scopes = frozenset({FIRM_DATA_READ})
    mutates = False

    def _settings(self) -> Settings:
        """Read at each call, like the database URL (tests and the demo set them late)."""
        return load_settings()

    def _limits(self, ctx: ActionContext) -> ReadLimits:
        return ReadLimits.of(self._settings(), ctx.remaining())

    async def _fetch(
        self, ctx: ActionContext, limits: ReadLimits, statement: sql.Composed | str, params: list[Any]
    ) -> list[tuple[Any, ...]]:
        """The rows of one read-only, time-bounded statement. Reads never create the schema (the
        database may be a replica, or the role may only read): no table yet means no records."""

        async def read_only(conn: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            try:
                async with conn.transaction():
                    await conn.execute("SET TRANSACTION READ ONLY")
                    await conn.execute(
                        "SELECT set_config('statement_timeout', %s, true)", [str(limits.statement_timeout_ms)]
                    )
                    cur = await conn.execute(statement, params)
                    return await cur.fetchall()
            except psycopg.errors.UndefinedTable:
                return []

        return await self._with_connection(ctx, read_only, create_schema=False)


class ReadLimits:
    """The bounds of one read, from the settings and the attempt's remaining time."""

    __slots__ = ("max_bytes", "max_rows", "statement_timeout_ms")

    def __init__(self, max_rows: int, max_bytes: int, statement_timeout_ms: int) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.statement_timeout_ms = statement_timeout_ms

    @classmethod
    def of(cls, settings: Settings, remaining_s: float) -> ReadLimits:
        # The statement must end before the attempt's deadline; 100 ms at least, as 0 means "none".
        timeout = max(100, min(settings.firm_statement_timeout_ms, int(remaining_s * 1000)))
        return cls(settings.firm_read_max_rows, settings.firm_read_max_bytes, timeout)


def check_result_size(result: JsonObject, max_bytes: int) -> None:
    """Fail ``result_too_large`` (not retried: the same read returns as much) past ``max_bytes``."""
    size = len(strict_json.dumps(result))
    if size > max_bytes:
        raise ActionError(
            ErrorKind.RESULT_TOO_LARGE,
            f"the result is {size} bytes of JSON, above SWITCHYARD_FIRM_READ_MAX_BYTES ({max_bytes});"
            " narrow the query (where, limit) or read one record",
            retryable=False,
        )


def query_limit(inputs: QueryInput, max_rows: int) -> int:
    """The rows ``inputs`` asks for; ``invalid_input`` past the deployment's maximum."""
    if inputs.limit is None:
        return min(DEFAULT_QUERY_LIMIT, max_rows)
    if inputs.limit > max_rows:
        raise ActionError(
            ErrorKind.INVALID_INPUT,
            f"limit {inputs.limit} is above SWITCHYARD_FIRM_QUERY_MAX_ROWS ({max_rows}); lower it",
            retryable=False,
        )
    return inputs.limit


def query_statement(
    tenant: str, inputs: QueryInput, limit: int, max_bytes: int
) -> tuple[sql.Composed, list[Any]]:
    """The SQL and parameters of a query: the tenant's records of one type whose fields equal
    ``where``, by id, ``limit + 1`` rows (the extra one tells ``truncated``). Each row is
    ``(id, version, fields, bytes so far)``, its fields left out (NULL) once the rows up to it hold
    more than ``max_bytes`` of fields as PostgreSQL prints them: the client never receives much
    more than the bound."""
    conditions = [sql.SQL("tenant = %s"), sql.SQL("record_type = %s")]
    params: list[Any] = [tenant, inputs.record_type]
    for name, value in sorted(inputs.where.items()):
        conditions.append(sql.SQL("fields -> %s = %s"))
        params.extend([name, Jsonb(value)])
    statement = sql.SQL(
        "SELECT id, version, CASE WHEN upto <= %s THEN fields END, upto FROM ("
        " SELECT id, version, fields,"
        " sum(octet_length(fields::text)) OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) AS upto"
        " FROM firm_records WHERE {conditions} ORDER BY id LIMIT %s"
        ") q ORDER BY id"
    ).format(conditions=sql.SQL(" AND ").join(conditions))
    return statement, [max_bytes, *params, limit + 1]


def query_output(record_type: str, rows: list[tuple[Any, ...]], limit: int, max_bytes: int) -> JsonObject:
    """The output of a query from its rows ``(id, version, fields or None, bytes so far)``;
    ``result_too_large`` when the first ``limit`` rows hold more than ``max_bytes``."""
    kept = rows[:limit]
    if any(fields is None for _, _, fields, _ in kept):
        raise ActionError(
            ErrorKind.RESULT_TOO_LARGE,
            f"the first {len(kept)} matching records hold {int(kept[-1][3])} bytes of fields, above"
            f" SWITCHYARD_FIRM_READ_MAX_BYTES ({max_bytes}); narrow the query (where, a lower limit)",
            retryable=False,
        )
    records: list[JsonObject] = [
        {"id": rid, "version": version, "fields": fields if isinstance(fields, dict) else json.loads(fields)}
        for rid, version, fields, _ in kept
    ]
    return {
        "record_type": record_type,
        "records": records,
        "count": len(records),
        "truncated": len(rows) > limit,
    }


class GetRecord(_FirmRead):
    """Reads one firm record of the tenant by type and id."""

    name = "firm.get_record"
    Input = GetRecordInput

    async def run(self, ctx: ActionContext, inputs: GetRecordInput, /) -> JsonObject:
        limits = self._limits(ctx)
        rows = await self._fetch(
            ctx,
            limits,
            "SELECT version, octet_length(fields::text),"
            " CASE WHEN octet_length(fields::text) <= %s THEN fields END"
            " FROM firm_records WHERE tenant = %s AND id = %s AND record_type = %s",
            [limits.max_bytes, ctx.tenant, inputs.id, inputs.record_type],
        )
        output = record_output(inputs, rows[0] if rows else None, limits.max_bytes)
        check_result_size(output, limits.max_bytes)
        return output


def record_output(inputs: GetRecordInput, row: tuple[Any, ...] | None, max_bytes: int) -> JsonObject:
    """``firm.get_record``'s output from its row ``(version, fields bytes, fields or None)``."""
    if row is None:
        if inputs.missing_ok:
            return {"found": False, "id": inputs.id, "record_type": inputs.record_type}
        raise ActionError(
            ErrorKind.NOT_FOUND, f"no {inputs.record_type} with id {inputs.id}", retryable=False
        )
    version, size, fields = row
    if fields is None:
        raise ActionError(
            ErrorKind.RESULT_TOO_LARGE,
            f"{inputs.record_type} {inputs.id} holds {size} bytes of fields, above"
            f" SWITCHYARD_FIRM_READ_MAX_BYTES ({max_bytes})",
            retryable=False,
        )
    fields = fields if isinstance(fields, dict) else json.loads(fields)
    output: JsonObject = {k: v for k, v in fields.items() if k not in GET_RESERVED_KEYS}
    output.update(
        {
            "found": True,
            "id": inputs.id,
            "record_type": inputs.record_type,
            "version": version,
            "fields": fields,
        }
    )
    return output


class Query(_FirmRead):
    """Lists the tenant's firm records of one type whose fields equal the given values."""

    name = "firm.query"
    Input = QueryInput

    async def run(self, ctx: ActionContext, inputs: QueryInput, /) -> JsonObject:
        limits = self._limits(ctx)
        limit = query_limit(inputs, limits.max_rows)  # before connecting: a bad limit is final
        statement, params = query_statement(ctx.tenant, inputs, limit, limits.max_bytes)
        rows = await self._fetch(ctx, limits, statement, params)
        output = query_output(inputs.record_type, rows, limit, limits.max_bytes)
        check_result_size(output, limits.max_bytes)
        return output
