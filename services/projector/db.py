"""Database plumbing: libpq URL → SQLAlchemy URL, engines, and Alembic migrations.

Migrations live in ``services/projector/migrations`` and are driven programmatically (no
``alembic.ini`` needed): :func:`upgrade_database` takes a PostgreSQL advisory lock first, so
several projectors starting at once against an empty database migrate it exactly once.

``schema=`` (on :func:`make_engine` and :func:`upgrade_database`) pins every connection's
``search_path`` to one schema, so the same models and migrations can build a second copy of the
projection next to the live one (``switchyard audit rebuild``).
"""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

# Alembic resolves "package:directory" through importlib.resources, so an installed wheel works too.
MIGRATIONS = "services.projector:migrations"
DRIVER = "postgresql+psycopg"
# Arbitrary but fixed key of the advisory lock that serialises migrations.
_MIGRATION_LOCK_KEY = 0x5357_5944  # "SWYD"


def sqlalchemy_url(url: str) -> sa.URL:
    """The SQLAlchemy (psycopg 3) URL of a libpq connection string.

    Accepts ``postgresql://`` / ``postgres://`` URIs (including unix sockets given as
    ``?host=/path`` and multiple hosts), libpq ``key=value`` strings such as
    ``"user=postgres host=/tmp dbname=app"``, and SQLAlchemy URLs (whose driver is replaced
    by psycopg).
    """
    text = url.strip()
    if not text:
        raise ValueError("empty database URL")
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme.startswith("postgresql+") or scheme.startswith("postgres+"):
        return sa.make_url(text).set(drivername=DRIVER)
    if scheme and scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: scheme {scheme!r}")
    params: dict[str, Any] = conninfo_to_dict(text)
    user = params.pop("user", None)
    password = params.pop("password", None)
    database = params.pop("dbname", None)
    host = params.pop("host", None)
    port = params.pop("port", None)
    query: dict[str, str] = {k: str(v) for k, v in params.items()}
    url_host: str | None = None
    url_port: int | None = None
    if host is not None and ("," in str(host) or str(host).startswith("/") or str(host).startswith("@")):
        query["host"] = str(host)  # unix socket directory or multi-host: psycopg takes it as-is
        if port is not None:
            query["port"] = str(port)
    else:
        url_host = str(host) if host is not None else None
        if port is not None:
            if "," in str(port):
                query["port"] = str(port)
            else:
                url_port = int(port)
    return sa.URL.create(
        DRIVER,
        username=str(user) if user is not None else None,
        password=str(password) if password is not None else None,
        host=url_host,
        port=url_port,
        database=str(database) if database is not None else None,
        query=query,
    )


SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_schema_name(schema: str) -> str:
    """``schema`` if it is a plain lower-case PostgreSQL identifier, else ``ValueError``."""
    if not SCHEMA_NAME.match(schema):
        raise ValueError(f"not a plain schema name: {schema!r}")
    return schema


def pin_search_path(engine: sa.Engine, schema: str) -> None:
    """Make every new connection of ``engine`` use only ``schema`` (before SQLAlchemy's own setup)."""
    statement = sql.SQL("SET search_path TO {}").format(sql.Identifier(check_schema_name(schema)))

    @sa.event.listens_for(engine, "connect", insert=True)
    def _set_search_path(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            dbapi_connection.autocommit = autocommit


def make_engine(url: str, *, schema: str | None = None, **kwargs: Any) -> sa.Engine:
    """An engine on ``url`` (any form :func:`sqlalchemy_url` accepts) that survives restarts.

    With ``schema``, every connection's ``search_path`` is that schema only.
    """
    kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 2)
    engine = sa.create_engine(sqlalchemy_url(url), **kwargs)
    if schema is not None:
        pin_search_path(engine, schema)
    return engine


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for the projector's migrations, optionally bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_database(url: str, revision: str = "head", *, schema: str | None = None) -> None:
    """Migrate the database at ``url`` to ``revision`` (``switchyard db upgrade``). Idempotent.

    With ``schema`` (which must exist), the tables and ``alembic_version`` are made in that schema.
    """
    engine = make_engine(url, schema=schema, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
            conn.commit()
            try:
                command.upgrade(alembic_config(conn), revision)
                conn.commit()
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
