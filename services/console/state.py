"""What one console process holds: the database engine (read-only sessions), the Kafka gateway
and the definitions registry reader; and the request-scoped helpers over them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.config import Settings
from services.console.actions import Gateway
from services.console.config import ConsoleSettings
from services.projector.db import make_engine
from services.registry.compacted import CompactedTable
from services.registry.definitions import DefinitionEntry, definitions_table

log = logging.getLogger(__name__)


@dataclass
class ConsoleState:
    settings: Settings
    console: ConsoleSettings
    engine: sa.Engine
    gateway: Gateway
    definitions: CompactedTable[DefinitionEntry] | None = None
    definitions_error: str | None = field(default=None)

    @classmethod
    def create(cls, settings: Settings, console: ConsoleSettings) -> ConsoleState:
        url = console.database_url or settings.database_url
        if not url:
            raise ValueError("no database: set DATABASE_URL (or SWITCHYARD_CONSOLE_DATABASE_URL)")
        # The server never writes to PostgreSQL: every transaction is read-only, whatever the role.
        engine = make_engine(
            url, pool_size=5, connect_args={"options": "-c default_transaction_read_only=on"}
        )
        return cls(settings, console, engine, Gateway(settings))

    def start(self) -> None:
        try:
            self.definitions = definitions_table(self.settings).start()
        except Exception as exc:  # the console still serves history without the registry
            self.definitions_error = f"{type(exc).__name__}: {exc}"
            log.warning("definitions registry unavailable", extra={"error": self.definitions_error})

    def stop(self) -> None:
        if self.definitions is not None:
            self.definitions.stop()
        self.gateway.close()
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session

    def definition(self, tenant: str, name: str, version: int) -> DefinitionEntry | None:
        if self.definitions is None:
            return None
        return self.definitions.get(f"{tenant}/{name}/{version}")

    def definition_entries(self, tenants: frozenset[str] | None) -> list[DefinitionEntry]:
        if self.definitions is None:
            return []
        entries = [e for _, e in self.definitions.items() if tenants is None or e.tenant in tenants]
        return sorted(entries, key=lambda e: (e.tenant, e.signed.name, -e.signed.version))
