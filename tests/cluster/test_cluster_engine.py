"""`topics ensure` and the engine on a three-node cluster: replicated topics, one run end to end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource  # type: ignore[attr-defined]
from typer.testing import CliRunner

from services.bus.topics import Topics, internal_specs
from services.cli import app
from services.config import Settings, get_settings
from services.devinfra.kafka_cluster import LocalCluster
from tests.fixtures.engine import Engine

pytestmark = pytest.mark.integration

CHAIN = """
name: cluster-chain
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, inputs: {msg: "${{ trigger.data.msg }}"}}
  - {id: b, action: echo, needs: [a], inputs: {prev: "${{ steps.a.output.msg }}"}}
"""


def _replication(admin: AdminClient, topics: list[str]) -> dict[str, tuple[int, str]]:
    """topic -> (fewest replicas of any partition, min.insync.replicas), once the metadata lists
    them all (a broker learns of a new topic from the controller a moment after its creation)."""
    deadline = time.monotonic() + 30
    while not set(topics) <= set(metadata := admin.list_topics(timeout=15).topics):
        assert time.monotonic() < deadline, f"topics not in the metadata after 30 s: {topics}"
        time.sleep(0.1)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    configs = {r.name: f.result(timeout=30) for r, f in admin.describe_configs(resources).items()}
    return {
        t: (
            min(len(p.replicas) for p in metadata[t].partitions.values()),
            str(configs[t]["min.insync.replicas"].value),
        )
        for t in topics
    }


def _ensure(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return CliRunner().invoke(app, ["topics", "ensure"])
    finally:
        get_settings.cache_clear()


def test_topics_ensure_refuses_unsafe_settings_and_creates_rf3_min_isr2(
    cluster: LocalCluster, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": cluster.bootstrap, "SWITCHYARD_TOPIC_PREFIX": f"c{unique}"}
    refused = _ensure(
        monkeypatch, {**base, "SWITCHYARD_REPLICATION_FACTOR": "3", "SWITCHYARD_MIN_INSYNC_REPLICAS": "1"}
    )
    assert refused.exit_code == 1, refused.output
    assert "min.insync.replicas 1 with replication factor 3" in " ".join(refused.output.split())
    too_many = _ensure(
        monkeypatch, {**base, "SWITCHYARD_REPLICATION_FACTOR": "4", "SWITCHYARD_MIN_INSYNC_REPLICAS": "2"}
    )
    assert too_many.exit_code == 1 and "the cluster has 3 broker(s)" in " ".join(too_many.output.split())
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    assert not [t for t in admin.list_topics(timeout=15).topics if t.startswith(f"c{unique}.")], (
        "refused yet created"
    )

    made = _ensure(
        monkeypatch, {**base, "SWITCHYARD_REPLICATION_FACTOR": "3", "SWITCHYARD_MIN_INSYNC_REPLICAS": "2"}
    )
    assert made.exit_code == 0, made.output
    names = [s.name for s in internal_specs(Settings(topic_prefix=f"c{unique}"))]
    assert _replication(admin, names) == dict.fromkeys(names, (3, "2"))


def test_one_workflow_end_to_end_on_the_cluster(
    engine_factory: Callable[..., Engine], cluster: LocalCluster
) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    engine = engine_factory(replication_factor=3)
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topics = Topics(engine.settings.topic_prefix)
    assert _replication(admin, [topics.events, topics.tenant_triggers("acme")]) == {
        topics.events: (3, "2"),
        topics.tenant_triggers("acme"): (3, "2"),
    }
    router_ready = engine.start("router", run_router, instance_id="r1")
    executor_ready = engine.start("executor", run_executor, instance_id="e1")
    assert router_ready.wait(90), "router did not get its partitions"
    assert executor_ready.wait(90), "executor did not get its partitions"
    engine.publish(CHAIN)
    key = engine.trigger("go", {"msg": "hi"})
    events = engine.wait_terminal([engine.run_id("cluster-chain", key)], timeout_s=90)
    (history,) = events.values()
    types = [e["type"] for e in history]
    assert types[-1] == "run_succeeded", types
    assert types.count("step_succeeded") == 2
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1))
