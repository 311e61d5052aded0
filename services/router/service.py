"""The router process: registries, then intake and core, each its own transactional loop (thread).

With ``DATABASE_URL`` the core also reads the run history in PostgreSQL (the projector's tables):
duplicate triggers and replays are then recognised for as long as the history keeps a run, not only
while router memory does (:mod:`services.router.history`)."""

from __future__ import annotations

import logging
import threading

from services.bus.topics import Topics, admin_client, check_topics, internal_specs
from services.bus.txloop import TransactionalLoop
from services.config import Settings, default_instance_id
from services.registry.definitions import DefinitionCatalog, definitions_table
from services.registry.tenants import tenants_table
from services.router.core import CoreProcessor
from services.router.history import NoHistory, PostgresHistory, RunHistory
from services.router.intake import IntakeProcessor
from services.router.load import TenantLoad

log = logging.getLogger(__name__)


def run_router(
    settings: Settings,
    stop: threading.Event,
    *,
    instance_id: str | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Run intake and core until ``stop`` is set. Blocks."""
    instance = instance_id or default_instance_id(settings)
    topics = Topics(settings.topic_prefix)
    check_topics(admin_client(settings), internal_specs(settings))
    tenants = tenants_table(settings).start()
    definitions = definitions_table(settings).start()
    tenants.wait_caught_up(60)
    definitions.wait_caught_up(60)
    catalog = DefinitionCatalog(definitions, tenants)
    load = TenantLoad()
    prefix = settings.topic_prefix
    history: RunHistory = (
        PostgresHistory(settings.database_url, topics.events) if settings.database_url else NoHistory()
    )
    core = TransactionalLoop(
        settings,
        service="router.core",
        group_id=f"{prefix}.router.core",
        transactional_id=f"{prefix}.router.core.{instance}",
        subscribe=[topics.inbox],
        processor=CoreProcessor(settings, catalog, tenants, load=load, history=history),
    )
    intake = TransactionalLoop(
        settings,
        service="router.intake",
        group_id=f"{prefix}.router.intake",
        transactional_id=f"{prefix}.router.intake.{instance}",
        subscribe=[topics.trigger_pattern, topics.control],
        processor=IntakeProcessor(settings, catalog, tenants, load),
        # Paused tenants resume often; without these a resumed partition waits for the previous
        # long poll and the fetch backoffs (~0.5 s) before its next record.
        consumer_overrides={
            "fetch.wait.max.ms": 100,
            "fetch.error.backoff.ms": 10,
            "fetch.queue.backoff.ms": 10,
        },
    )
    errors: list[BaseException] = []

    def guarded(loop: TransactionalLoop) -> None:
        try:
            loop.run(stop)
        except BaseException as exc:
            errors.append(exc)
            log.exception("router loop crashed", extra={"service": loop.service})
            stop.set()

    threads = [threading.Thread(target=guarded, args=(loop,), name=loop.service) for loop in (core, intake)]
    for thread in threads:
        thread.start()
    if ready is not None:
        done = ready

        def signal_ready() -> None:
            core.ready.wait()
            intake.ready.wait()
            done.set()

        threading.Thread(target=signal_ready, daemon=True).start()
    log.info("router started", extra={"instance": instance})
    for thread in threads:
        thread.join()
    tenants.stop()
    definitions.stop()
    if isinstance(history, PostgresHistory):
        history.close()
    if errors:
        raise errors[0]
