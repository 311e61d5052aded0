"""Alembic environment: migrates the connection handed over in ``config.attributes["connection"]``.

Without one (plain ``alembic`` command line with ``-x url=...`` or ``DATABASE_URL``) it opens
its own connection. Offline (``--sql``) mode renders the SQL for the configured URL.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from services.projector.db import sqlalchemy_url
from services.projector.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> sa.URL:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("no database: pass -x url=postgresql://... or set DATABASE_URL")
    return sqlalchemy_url(url)


def _configure(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = sa.create_engine(_url(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
