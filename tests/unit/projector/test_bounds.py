"""What the projection can store (services.projector.bounds) and which errors blame a record."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psycopg
import psycopg.errors as pg
import pytest
import sqlalchemy as sa

from services.contracts.dead_letters import MAX_FIELD, encode_dead_letter
from services.contracts.serde import decode
from services.projector.bounds import (
    COLUMN_LIMITS,
    MAX_KIND,
    MAX_NAME,
    NUL_ESCAPE,
    storable_id,
    storable_json,
    storable_text,
)
from services.projector.models import Base
from services.projector.writer import is_data_error

# PostgreSQL's largest B-tree entry (btree version 4), less the tuple header and alignment.
BTREE_MAX_ENTRY = 2704
ENTRY_OVERHEAD = 64
FIXED_WIDTH = {"INTEGER": 4, "BIGINT": 8, "TIMESTAMP": 8, "BOOLEAN": 1}


def test_plain_text_within_its_bound_is_kept_as_it_is() -> None:
    assert storable_text("acme", MAX_NAME) == "acme"
    assert storable_text("naïve → ü", MAX_NAME) == "naïve → ü"
    assert storable_text("x" * MAX_NAME, MAX_NAME) == "x" * MAX_NAME


def test_long_text_is_cut_with_an_ellipsis_as_dead_letters_cut_theirs() -> None:
    tenant = "t" * 300_000
    bounded = storable_text(tenant, MAX_NAME)
    assert len(bounded) == MAX_NAME and bounded.endswith("…") and bounded.startswith("ttt")
    # The same cut as the engine's own dead letter of that record: the two rows agree.
    dead_letter = encode_dead_letter("router.intake", "invalid_field", "no", 1, tenant=tenant)
    _, record = decode(dead_letter, expected="DeadLetter")
    assert MAX_FIELD == MAX_NAME and record["tenant"] == bounded
    assert storable_text(record["tenant"], MAX_NAME) == record["tenant"]  # idempotent


def test_nul_and_lone_surrogates_become_visible_escapes() -> None:
    assert storable_text("a\x00b", MAX_KIND) == "a" + NUL_ESCAPE + "b"
    assert storable_text("a\ud800b", MAX_KIND) == "a\\ud800b"
    escaped = storable_text("\x00" * 100, 50)
    assert len(escaped) == 50 and escaped.endswith("…") and "\x00" not in escaped


def test_ids_that_do_not_fit_become_a_digest_of_their_bytes() -> None:
    assert storable_id("0b7c2a8e-run") == "0b7c2a8e-run"
    long_a, long_b = "r" * 300 + "a", "r" * 300 + "b"
    digest = "sha256:" + hashlib.sha256(long_a.encode()).hexdigest()
    assert storable_id(long_a) == digest == storable_id(long_a)  # deterministic: a replay matches
    assert storable_id(long_b) != digest  # a cut would have merged them
    assert storable_id("id\x00") != storable_id("id" + NUL_ESCAPE)
    assert storable_id("id\ud800").startswith("sha256:")


def test_json_values_lose_nul_surrogates_and_non_finite_numbers() -> None:
    value = {"a\x00": ["x\ud800", float("inf"), float("nan"), 1.5, 10**30, None, True]}
    stored = storable_json(value)
    assert stored == {"a\\u0000": ["x\\ud800", "inf", "nan", 1.5, 10**30, None, True]}
    json.dumps(stored, allow_nan=False).encode("utf-8")


def _entry_bytes(table: sa.Table, columns: list[sa.Column[Any]]) -> int:
    total = 0
    for column in columns:
        kind = type(column.type).__name__.upper()
        if kind in ("STRING", "VARCHAR", "TEXT"):
            limit = COLUMN_LIMITS.get(table.name, {}).get(column.name)
            assert limit is not None, f"{table.name}.{column.name} is indexed but has no bound"
            total += 4 * limit + 4  # UTF-8: at most 4 bytes a character, plus the varlena header
        else:
            total += FIXED_WIDTH.get(kind, 8)
    return total


#: Indexed text columns that no record writes (the projector's own names, the tenants mirror).
NOT_FROM_RECORDS = {("consumer_offsets", "consumer"), ("consumer_offsets", "topic"), ("tenants", "tenant")}


def test_no_index_entry_of_the_projection_can_exceed_the_btree_limit() -> None:
    checked = 0
    for table in Base.metadata.tables.values():
        keys: list[list[sa.Column[Any]]] = [list(table.primary_key.columns)]
        keys += [list(index.columns) for index in table.indexes]
        keys += [list(c.columns) for c in table.constraints if isinstance(c, sa.UniqueConstraint)]
        for columns in keys:
            if any((table.name, c.name) in NOT_FROM_RECORDS for c in columns):
                continue
            size = _entry_bytes(table, columns)
            assert size + ENTRY_OVERHEAD <= BTREE_MAX_ENTRY, (table.name, [c.name for c in columns], size)
            checked += 1
    assert checked > 20


def test_every_bound_names_a_text_column_of_the_models() -> None:
    for table, limits in COLUMN_LIMITS.items():
        columns = Base.metadata.tables[table].columns
        for name in limits:
            assert type(columns[name].type).__name__ in ("String", "Text"), (table, name)


# -- which errors blame a record ---------------------------------------------------------------


def _wrapped(orig: Exception, cls: type[sa.exc.DBAPIError] = sa.exc.DBAPIError) -> sa.exc.DBAPIError:
    """``orig`` as SQLAlchemy raises it around the driver's error."""
    err = cls.instance("INSERT …", {}, orig, psycopg.Error)
    assert isinstance(err, sa.exc.DBAPIError)
    return err


DATA_ERRORS: list[BaseException] = [
    pg.ProgramLimitExceeded("index row size 3464 exceeds btree version 4 maximum 2704"),
    pg.StatementTooComplex("stack depth limit exceeded"),
    pg.UntranslatableCharacter("unsupported Unicode escape sequence"),
    pg.InvalidTextRepresentation('invalid input syntax for type json: Token "NaN" is invalid'),
    pg.CharacterNotInRepertoire('invalid byte sequence for encoding "UTF8": 0x00'),
    pg.NumericValueOutOfRange("integer out of range"),
    pg.StringDataRightTruncation("value too long"),
    pg.CheckViolation("new row violates check constraint"),
    pg.ForeignKeyViolation("insert or update violates foreign key constraint"),
    pg.NotNullViolation("null value in column"),
    pg.CardinalityViolation("ON CONFLICT DO UPDATE command cannot affect row a second time"),
    psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"),  # client side
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),  # before sending
    ValueError("Out of range float values are not JSON compliant"),
    sa.exc.StatementError("bad parameter", "INSERT …", {}, ValueError("cannot convert")),
]
INFRASTRUCTURE_ERRORS: list[BaseException] = [
    psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly"),
    pg.AdminShutdown("terminating connection due to administrator command"),
    pg.SerializationFailure("could not serialize access due to concurrent update"),
    pg.DeadlockDetected("deadlock detected"),
    pg.QueryCanceled("canceling statement due to statement timeout"),
    pg.DiskFull("could not extend file"),
    pg.OutOfMemory("out of memory"),
    pg.UndefinedTable('relation "runs" does not exist'),
    pg.InsufficientPrivilege("permission denied for table runs"),
    pg.InternalError_("internal error"),
    sa.exc.ResourceClosedError("This Connection is closed"),
    sa.exc.TimeoutError("QueuePool limit reached"),
]


@pytest.mark.parametrize("exc", DATA_ERRORS, ids=lambda e: type(e).__name__)
def test_data_errors_blame_the_record(exc: Exception) -> None:
    assert is_data_error(exc)
    if isinstance(exc, psycopg.Error):
        assert is_data_error(_wrapped(exc))


@pytest.mark.parametrize("exc", INFRASTRUCTURE_ERRORS, ids=lambda e: type(e).__name__)
def test_infrastructure_errors_are_retried(exc: Exception) -> None:
    assert not is_data_error(exc)
    if isinstance(exc, psycopg.Error):
        assert not is_data_error(_wrapped(exc))


def test_an_invalidated_connection_is_retried_whatever_its_error_says() -> None:
    err = _wrapped(pg.ProgramLimitExceeded("index row size"))
    err.connection_invalidated = True
    assert not is_data_error(err)


def test_the_sqlstates_are_the_ones_postgresql_sends() -> None:
    # The classification reads SQLSTATE classes: the classes above must carry the real codes.
    assert pg.ProgramLimitExceeded.sqlstate == "54000"
    assert pg.UntranslatableCharacter.sqlstate == "22P05"
    assert pg.InvalidTextRepresentation.sqlstate == "22P02"
    assert pg.AdminShutdown.sqlstate == "57P01"
    assert pg.SerializationFailure.sqlstate == "40001"
    assert pg.CardinalityViolation.sqlstate == "21000"
    assert issubclass(pg.ProgramLimitExceeded, psycopg.OperationalError)  # not a DataError
