"""``run_executor``: the executor process — topic check, registry, processor, transactional loop."""

from __future__ import annotations

import logging
import os
import socket
import threading

from services.bus.topics import Topics, TopicsNotReady, admin_client, check_topics, internal_specs
from services.bus.txloop import TransactionalLoop
from services.config import Settings
from services.executor.execute import GrantsLookup
from services.executor.plugins import ActionRegistry
from services.executor.processor import DEFAULT_MAX_ATTEMPT_S, SERVICE, ExecutorProcessor

log = logging.getLogger("services.executor")


def default_instance_id(settings: Settings) -> str:
    return settings.instance_id or f"{socket.gethostname()}-{os.getpid()}"


def run_executor(
    settings: Settings,
    stop: threading.Event,
    *,
    instance_id: str | None = None,
    registry: ActionRegistry | None = None,
    ready: threading.Event | None = None,
    grants: GrantsLookup | None = None,
    max_attempt_s: float | None = DEFAULT_MAX_ATTEMPT_S,
) -> None:
    """Consume step commands and produce step results until ``stop`` is set.

    Fails fast (:class:`TopicsNotReady`) when the commands, inbox or DLQ topic is missing or has
    the wrong partition count. ``ready`` is set once the consumer has its first assignment. On
    stop, the batch in progress finishes (bounded by its deadlines) and is committed.
    """
    topics = Topics(settings.topic_prefix)
    wanted = {topics.commands, topics.inbox, topics.dlq}
    specs = [spec for spec in internal_specs(settings) if spec.name in wanted]
    try:
        check_topics(admin_client(settings), specs)
    except TopicsNotReady as exc:
        raise TopicsNotReady(f"the executor cannot start. {exc}") from exc
    instance = instance_id or default_instance_id(settings)
    registry = registry if registry is not None else ActionRegistry.load()
    inbox = next(spec for spec in specs if spec.name == topics.inbox)
    processor = ExecutorProcessor(
        registry,
        topics,
        executor_id=instance,
        inbox_partitions=inbox.partitions,
        grants=grants,
        max_attempt_s=max_attempt_s,
        ready=ready,
    )
    try:
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
        processor.close()
        log.info("executor stopped", extra={"instance_id": instance})
