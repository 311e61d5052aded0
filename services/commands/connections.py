"""What CLI commands need to reach the engine's broker and database, shared by every command module.

Each helper ends a command with one clear line on stderr and exit code 2 when the connection is
not configured, never with a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import sqlalchemy as sa
import typer
from sqlalchemy.orm import Session

from services.commands.text import console, esc
from services.config import Settings, get_settings, load_settings
from services.projector.db import make_engine

NO_BROKER = (
    "[red]error:[/] KAFKA_BOOTSTRAP_SERVERS is not set. Start a local broker with "
    '`switchyard dev up` and `eval "$(switchyard dev env)"`.'
)


def kafka_settings() -> Settings:
    """The settings, with a broker configured (else exit 2 saying how to get one)."""
    settings = get_settings()
    if not settings.kafka_bootstrap_servers:
        console(stderr=True).print(NO_BROKER)
        raise typer.Exit(2)
    return settings


@contextmanager
def db_session() -> Iterator[Session]:
    """A session on the run history database (else exit 2 saying what is missing)."""
    url = load_settings().database_url  # not cached: tests point it at their own database
    if not url:
        console(stderr=True).print(
            "[red]error:[/] no database configured: set DATABASE_URL (or SWITCHYARD_DATABASE_URL), "
            'or run `switchyard dev up` and `eval "$(switchyard dev env)"`.'
        )
        raise typer.Exit(2)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            yield session
    except sa.exc.ProgrammingError as exc:
        if not isinstance(exc.orig, psycopg.errors.UndefinedTable):
            raise
        console(stderr=True).print(
            "[red]error:[/] the database has no run history tables yet: migrate it "
            "(`switchyard db upgrade`) or start the projector, which migrates on start."
        )
        raise typer.Exit(2) from exc
    except sa.exc.OperationalError as exc:
        console(stderr=True).print(f"[red]error:[/] cannot reach PostgreSQL: {esc(str(exc.orig).strip())}")
        console(stderr=True).print(
            "Is it running? `switchyard dev status`; start it with `switchyard dev up`."
        )
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
