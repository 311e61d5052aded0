"""Database plumbing: libpq URL → SQLAlchemy URL, engines, and Alembic migrations.

Migrations live in ``services/projector/migrations`` and are driven programmatically (no
``alembic.ini`` needed): :func:`upgrade_database` takes a PostgreSQL advisory lock first, so
several projectors starting at once against an empty database migrate it exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from psycopg.conninfo import conninfo_to_dict

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
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


def make_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine on ``url`` (any form :func:`sqlalchemy_url` accepts) that survives restarts."""
    kwargs.setdefault("pool_pre_ping", True)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", 2)
    return sa.create_engine(sqlalchemy_url(url), **kwargs)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic configuration for the projector's migrations, optionally bound to ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (``switchyard db upgrade``). Idempotent."""
    engine = make_engine(url, poolclass=sa.pool.NullPool)
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
