"""What the router core reads of the run history in PostgreSQL (the projector's tables).

Two questions, both about runs the core no longer holds in memory:

* :meth:`RunHistory.known` — which of a batch's new run ids the history already holds: the durable
  half of trigger deduplication (a run id is ``uuid5(tenant, workflow, idempotency key)``). One
  statement per batch, on the primary key.
* :meth:`RunHistory.load` — a finished run as the history stores it, to rebuild its state for a
  replay (:mod:`services.router.rehydrate`).

Only the history of the core's own topics counts: a database whose projector never stored offsets
of ``<prefix>.events`` answers nothing (so a database shared by several prefixes, as in tests,
never makes one prefix's runs duplicates of another's).

Assumption the guarantee rests on: the projector is less than ``SWITCHYARD_FINISHED_RUN_RETENTION_S``
behind the router. Runs the router still holds are answered from memory; the history only has to
know the runs that left it.

:class:`NoHistory` stands in without ``DATABASE_URL``: then the horizon is the in-memory window.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from services.projector import queries

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest a lookup may wait for a connection or a statement: it runs inside the core's Kafka
#: transaction, which must commit well within SWITCHYARD_TRANSACTION_TIMEOUT_MS.
STATEMENT_TIMEOUT_MS = 2000
CONNECT_TIMEOUT_S = 2
#: After a failed lookup the history is not asked again for this long (each failure would cost a
#: timeout on the hot path); meanwhile the horizon is the in-memory window.
RETRY_AFTER_S = 5.0


class HistoryUnavailable(Exception):
    """The history could not be read now (database unreachable, statement timed out, ...)."""


class HistoryPaused(HistoryUnavailable):
    """Not asked: the history failed less than :data:`RETRY_AFTER_S` ago."""


@dataclass(frozen=True)
class KnownRun:
    """A run id the history holds, with what a duplicate's dead letter says about it."""

    run_id: str
    tenant: str
    state: str
    finished_at: datetime | None


@dataclass(frozen=True)
class StoredStep:
    step_id: str
    state: str
    attempts: int
    output: Any
    error_kind: str | None
    error_message: str | None


@dataclass(frozen=True)
class StoredRun:
    """A run as the projection stores it (``trigger_data`` is the trigger's ``data``)."""

    run_id: str
    tenant: str
    workflow: str
    version: int
    state: str
    correlation_id: str
    idempotency_key: str | None
    event_type: str | None
    trigger_data: Any
    trigger_omitted: bool
    created_at: datetime
    last_seq: int
    replays: int
    steps: tuple[StoredStep, ...]


class RunHistory(Protocol):
    """Raises :class:`HistoryUnavailable` when the history cannot be read now."""

    @property
    def enabled(self) -> bool: ...

    def known(self, run_ids: Collection[str]) -> dict[str, KnownRun]: ...

    def load(self, run_id: str) -> StoredRun | None: ...


class NoHistory:
    """No history database configured: nothing is known beyond router memory."""

    enabled = False

    def known(self, run_ids: Collection[str]) -> dict[str, KnownRun]:
        return {}

    def load(self, run_id: str) -> StoredRun | None:
        return None


class PostgresHistory:
    """The projection in PostgreSQL, read with one autocommit connection (one round trip per
    question), short timeouts and a pause after a failure."""

    enabled = True

    def __init__(
        self,
        url: str,
        events_topic: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        engine: sa.Engine | None = None,
    ) -> None:
        from services.projector.db import make_engine

        self.events_topic = events_topic
        self.clock = clock
        self.engine = engine or make_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_pre_ping=False,  # a round trip per lookup; a broken connection is replaced on error
            isolation_level="AUTOCOMMIT",
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT_S,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                "application_name": "switchyard-router-history",
            },
        )
        self._paused_until = 0.0

    def known(self, run_ids: Collection[str]) -> dict[str, KnownRun]:
        ids = [run_id for run_id in run_ids if queryable(run_id)]
        if not ids:
            return {}
        rows = self._read(lambda conn: queries.runs_in_history(conn, ids, self.events_topic))
        return {r[0]: KnownRun(r[0], r[1], r[2], r[3]) for r in rows}

    def load(self, run_id: str) -> StoredRun | None:
        if not queryable(run_id):
            return None
        rows = self._read(lambda conn: queries.stored_run(conn, run_id, self.events_topic))
        if rows is None:
            return None
        run = rows.run
        return StoredRun(
            run_id=run.run_id,
            tenant=run.tenant,
            workflow=run.workflow,
            version=run.version,
            state=run.state,
            correlation_id=run.correlation_id,
            idempotency_key=run.idempotency_key,
            event_type=run.event_type,
            trigger_data=run.trigger_data,
            trigger_omitted=rows.trigger_omitted,
            created_at=run.created_at,
            last_seq=rows.last_seq,
            replays=rows.replays,
            steps=tuple(
                StoredStep(s.step_id, s.state, s.attempts, s.output, s.error_kind, s.error_message)
                for s in rows.steps
            ),
        )

    def close(self) -> None:
        self.engine.dispose()

    def _read(self, query: Callable[[sa.Connection], T]) -> T:
        now = self.clock()
        if now < self._paused_until:
            raise HistoryPaused("the history database failed less than 5 s ago; not asked again yet")
        try:
            try:
                with self.engine.connect() as conn:
                    return query(conn)
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
                # The kept connection died (the server restarted, an idle timeout): once more on a
                # new one before calling the history unavailable.
                with self.engine.connect() as conn:
                    return query(conn)
        except (SQLAlchemyError, OSError) as exc:
            self._paused_until = now + RETRY_AFTER_S
            if isinstance(exc, DBAPIError) and _undefined_table(exc):
                # A database the projector never migrated holds no history of ours.
                raise HistoryUnavailable("the history database has no projection tables") from exc
            self.engine.dispose()  # the connection may be broken: the next lookup opens a new one
            raise HistoryUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc


def queryable(run_id: str) -> bool:
    """Whether PostgreSQL can take ``run_id`` as a parameter. One it cannot (a NUL, a lone
    surrogate: only a forged inbox record holds one) is in no history — the projector stores such
    ids escaped — and must not fail the lookup of the rest of its batch."""
    if "\x00" in run_id:
        return False
    try:
        run_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _undefined_table(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == "42P01"
