"""``run_executor``: the executor process — topic check, registry, guardrails, processor, transactional loop.

By default the guardrails read the tenants registry (the compacted tenants topic, tailed in the
background): a tenant's granted ``scopes`` for permission checks and its ``external_call_rate``
for the external-call rate limit. A tenant missing from the registry holds no scopes and gets the
default external-call rate. ``http.request`` gets the engine-wide egress switch and each tenant's
egress allow-list (:func:`configure_egress`).

Attempts run up to their step's timeout, bounded by ``SWITCHYARD_MAX_STEP_TIMEOUT_S`` (which
publishing enforces too). A :class:`~services.executor.cancellation.CancellationWatcher` tails the
events topic and cancels the attempts of runs the router cancelled or failed.
"""

from __future__ import annotations

import logging
import threading

from services.actions.egress import EgressConfig
from services.bus.topics import Topics, TopicsNotReady, admin_client, check_topics, internal_specs
from services.bus.txloop import TransactionalLoop
from services.config import Settings, default_instance_id
from services.executor.cancellation import CancellationWatcher
from services.executor.execute import GrantsLookup
from services.executor.guardrails import Guardrails
from services.executor.plugins import ActionRegistry
from services.executor.processor import SERVICE, ExecutorProcessor
from services.registry.compacted import CompactedTable
from services.registry.tenants import tenants_table
from services.secrets import load_resolver
from services.tenancy.config import TenantConfig

DEFAULT_EXTERNAL_CALL_RATE: float = TenantConfig.model_fields["external_call_rate"].default

log = logging.getLogger("services.executor")


def run_executor(
    settings: Settings,
    stop: threading.Event,
    *,
    instance_id: str | None = None,
    registry: ActionRegistry | None = None,
    ready: threading.Event | None = None,
    grants: GrantsLookup | None = None,
    guardrails: Guardrails | None = None,
    max_attempt_s: float | None = None,
) -> None:
    """Consume step commands and produce step results until ``stop`` is set.

    ``guardrails`` default to :func:`tenant_guardrails` over the tenants registry (``grants``, if
    given, replaces the registry's scopes lookup). ``max_attempt_s`` defaults to
    ``settings.max_step_timeout_s``.

    Fails fast (:class:`TopicsNotReady`) when the commands, inbox or DLQ topic is missing or has
    the wrong partition count. ``ready`` is set once the consumer has its first assignment. On
    stop, the batch in progress finishes (bounded by its deadlines) and is committed.
    """
    topics = Topics(settings.topic_prefix)
    wanted = {topics.commands, topics.inbox, topics.dlq, topics.events}
    specs = [spec for spec in internal_specs(settings) if spec.name in wanted]
    try:
        check_topics(admin_client(settings), specs)
    except TopicsNotReady as exc:
        raise TopicsNotReady(f"the executor cannot start. {exc}") from exc
    instance = instance_id or default_instance_id(settings)
    registry = registry if registry is not None else ActionRegistry.load()
    inbox = next(spec for spec in specs if spec.name == topics.inbox)
    table: CompactedTable[TenantConfig] | None = None
    if guardrails is None:
        table = tenants_table(settings).start()
        table.wait_caught_up(60)
        guardrails = tenant_guardrails(table)
    if grants is not None:
        guardrails.grants = grants
    configure_egress(registry, settings, table)
    processor = ExecutorProcessor(
        registry,
        topics,
        executor_id=instance,
        inbox_partitions=inbox.partitions,
        guardrails=guardrails,
        max_attempt_s=settings.max_step_timeout_s if max_attempt_s is None else max_attempt_s,
        ready=ready,
        max_in_flight=settings.executor_max_in_flight,
    )
    processor.secrets = load_resolver(settings)  # fails fast on a provider that cannot start
    watcher: CancellationWatcher | None = None
    try:
        watcher = CancellationWatcher(settings, topics.events, processor.attempts, instance=instance).start()
        loop = TransactionalLoop(
            settings,
            service=SERVICE,
            group_id=f"{settings.topic_prefix}.executor",
            transactional_id=f"{settings.topic_prefix}.executor.{instance}",
            subscribe=[topics.commands],
            processor=processor,
        )
        log.info(
            "executor starting",
            extra={"instance_id": instance, "actions": sorted(registry.names()), "topic": topics.commands},
        )
        loop.run(stop)
    finally:
        if watcher is not None:
            watcher.stop()
        processor.close()
        if table is not None:
            table.stop()
        log.info("executor stopped", extra={"instance_id": instance})


def configure_egress(
    registry: ActionRegistry, settings: Settings, table: CompactedTable[TenantConfig] | None
) -> None:
    """Give every action that has an egress policy (``http.request``) the engine-wide switch
    ``SWITCHYARD_EGRESS_ALLOW_PRIVATE`` and, from the tenants registry, each tenant's allow-list."""

    def allow(tenant: str) -> list[str]:
        config = table.get(tenant) if table is not None else None
        return [] if config is None else config.egress_allow

    egress = EgressConfig(settings.egress_allow_private, allow if table is not None else None)
    for action in registry:
        configure = getattr(action, "configure_egress", None)
        if callable(configure):
            configure(egress)


def tenant_guardrails(table: CompactedTable[TenantConfig]) -> Guardrails:
    """Guardrails whose grants and external-call rates are read from the tenants registry."""

    def grants(tenant: str) -> frozenset[str] | None:
        config = table.get(tenant)
        return None if config is None else frozenset(config.scopes)

    def rate(tenant: str) -> float:
        config = table.get(tenant)
        return DEFAULT_EXTERNAL_CALL_RATE if config is None else config.external_call_rate

    return Guardrails.create(grants=grants, external_call_rate=rate)
