"""Topic names (all under one configurable prefix), their specs, and `topics ensure` / start-up checks.

Replication comes from the settings (``replication_factor``, ``min_insync_replicas``) and is judged
against the cluster before topics are made (services/bus/replication.py).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ConfigResource,
    NewTopic,
)

from services.bus.replication import ClusterFacts, default_min_insync, judge, topic_config
from services.config import Settings


@dataclass(frozen=True)
class Topics:
    prefix: str = "wf"

    @property
    def inbox(self) -> str:
        return f"{self.prefix}.inbox"

    @property
    def commands(self) -> str:
        return f"{self.prefix}.commands"

    @property
    def events(self) -> str:
        return f"{self.prefix}.events"

    @property
    def router_state(self) -> str:
        return f"{self.prefix}.router.state"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.dlq"

    @property
    def control(self) -> str:
        return f"{self.prefix}.control"

    @property
    def definitions(self) -> str:
        return f"{self.prefix}.definitions"

    @property
    def tenants(self) -> str:
        return f"{self.prefix}.tenants"

    def tenant_triggers(self, tenant: str) -> str:
        return f"{self.prefix}.tenant.{tenant}.triggers"

    @property
    def trigger_pattern(self) -> str:
        """librdkafka regex subscription (leading ^) matching every tenant's trigger topic."""
        return f"^{re.escape(self.prefix)}\\.tenant\\.[A-Za-z0-9_-]+\\.triggers$"

    def tenant_of(self, topic: str) -> str | None:
        head, tail = f"{self.prefix}.tenant.", ".triggers"
        if topic.startswith(head) and topic.endswith(tail):
            tenant = topic[len(head) : -len(tail)]
            return tenant if TENANT_ID.fullmatch(tenant) else None
        return None


TENANT_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")

COMPACTED = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000", "segment.ms": "3600000"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)
    replication: int = 1


def min_insync(settings: Settings) -> int:
    return settings.min_insync_replicas or default_min_insync(settings.replication_factor)


def replicated_config(settings: Settings) -> dict[str, str]:
    """Topic configs every created topic carries for the settings' replication (tenant ones too)."""
    return topic_config(settings.replication_factor, min_insync(settings))


def internal_specs(settings: Settings) -> list[TopicSpec]:
    """Every internal topic. inbox, commands, events and router.state are co-partitioned."""
    t, n, rf = Topics(settings.topic_prefix), settings.internal_partitions, settings.replication_factor
    replicated = replicated_config(settings)
    return [
        TopicSpec(name, partitions, {**config, **replicated}, rf)
        for name, partitions, config in [
            (t.inbox, n, {}),
            (t.commands, n, {}),
            (t.events, n, {}),
            (t.router_state, n, COMPACTED),
            (t.dlq, 3, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
            (t.control, 3, {}),
            (t.definitions, 1, COMPACTED),
            (t.tenants, 1, COMPACTED),
        ]
    ]


class TopicsNotReady(RuntimeError):
    """Raised at service start when an expected topic is missing or misconfigured."""


class ReplicationUnsafe(RuntimeError):
    """The settings' replication on this cluster cannot guarantee exactly-once (message: why)."""


def cluster_facts(admin: AdminClient) -> ClusterFacts:
    """The broker count, and the effective config of the lowest-numbered broker (empty if denied)."""
    brokers = admin.list_topics(timeout=15).brokers
    config: dict[str, str] = {}
    if brokers:
        resource = ConfigResource(ConfigResource.Type.BROKER, str(min(brokers)))
        try:
            entries = admin.describe_configs([resource])[resource].result(timeout=30)
            config = {name: str(entry.value) for name, entry in entries.items() if entry.value is not None}
        except Exception:  # e.g. no DescribeConfigs on the cluster: judged as unknown
            config = {}
    return ClusterFacts(len(brokers), config)


def check_replication(admin: AdminClient, settings: Settings) -> list[str]:
    """Raise :class:`ReplicationUnsafe` if exactly-once cannot hold on this cluster with these
    settings; else return the warnings."""
    verdict = judge(settings.replication_factor, min_insync(settings), cluster_facts(admin))
    if verdict.problems:
        raise ReplicationUnsafe(
            "refusing to run exactly-once on this cluster:\n  " + "\n  ".join(verdict.problems)
        )
    return verdict.warnings


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(settings.kafka_config())


#: How long `ensure_topics` waits for topics it created to show in the broker's metadata.
VISIBLE_TIMEOUT_S = 30.0


def ensure_topics(admin: AdminClient, specs: list[TopicSpec], replication: int | None = None) -> list[str]:
    """Create missing topics (replication: each spec's unless given); returns the names created.
    Existing topics are left as they are."""
    existing = set(admin.list_topics(timeout=15).topics)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, replication or s.replication, config=s.config) for s in missing],
        operation_timeout=30,
    )
    created = []
    for name, future in futures.items():
        try:
            future.result(timeout=60)
            created.append(name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    await_visible(admin, [s for s in missing if s.name in created])
    return created


def await_visible(admin: AdminClient, specs: list[TopicSpec], timeout_s: float = VISIBLE_TIMEOUT_S) -> None:
    """Wait until the broker's metadata lists every topic of ``specs`` with all its partitions led.

    CreateTopics returns once the controller has committed the topics; a broker's metadata cache
    catches up a moment later (measured: a process started right after `ensure_topics` under load
    was told its four topics were missing). Returning only when they are visible means a
    `topics ensure` followed at once by the engine, or a test, never meets that window."""
    if not specs:
        return
    deadline = time.monotonic() + timeout_s
    pending = {s.name: s.partitions for s in specs}
    while True:
        topics = admin.list_topics(timeout=max(1.0, min(10.0, deadline - time.monotonic()))).topics
        for name, partitions in list(pending.items()):
            topic = topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                del pending[name]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if pending:
        raise TimeoutError(
            f"created, but not yet visible in the broker's metadata after {timeout_s:.0f}s: "
            + ", ".join(sorted(pending))
        )


def check_topics(admin: AdminClient, specs: list[TopicSpec]) -> None:
    """Fail with one clear message listing every missing or misconfigured topic."""
    metadata = admin.list_topics(timeout=15).topics
    problems = []
    for spec in specs:
        topic = metadata.get(spec.name)
        if topic is None or topic.error is not None:
            problems.append(f"{spec.name}: missing")
            continue
        if len(topic.partitions) != spec.partitions:
            problems.append(
                f"{spec.name}: has {len(topic.partitions)} partitions, expected {spec.partitions}"
            )
        replicas = min((len(p.replicas) for p in topic.partitions.values()), default=spec.replication)
        if replicas < spec.replication:
            problems.append(f"{spec.name}: has replication factor {replicas}, expected {spec.replication}")
    compacted = [s for s in specs if s.config.get("cleanup.policy") == "compact" and s.name in metadata]
    if compacted:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, s.name) for s in compacted]
        for resource, future in admin.describe_configs(resources).items():
            policy = future.result(timeout=30).get("cleanup.policy")
            if policy is None or "compact" not in str(policy.value):
                problems.append(f"{resource.name}: cleanup.policy must include compact")
    if problems:
        raise TopicsNotReady(
            "Kafka topics are not ready:\n  " + "\n  ".join(problems) + "\nRun `switchyard topics ensure`."
        )
