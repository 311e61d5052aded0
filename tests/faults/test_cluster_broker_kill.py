"""SIGKILL of the broker leading the most internal partitions, under load, then its restart (issue 18).

On a private three-node cluster (tests/cluster/support.py; RF 3, min ISR 2, unclean election off)
with the scenario's topics replicated 3: the leader of most of the scenario's partitions is killed
at a random instant under load, the engine must commit new history without it, then the node is
restarted and must rejoin. Same counted invariants as every scenario (tests/faults/scenario.py).
Long mode only (SWITCHYARD_FAULTS_LONG=1): with the cluster's start it does not fit CI's budget.
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from services.devinfra.kafka_cluster import LocalCluster
from tests.cluster.support import leaders, running_cluster
from tests.faults.harness import LONG, router_progress, scale, wait_for
from tests.faults.scenario import Context, run_scenario
from tests.fixtures.engine import make_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.timeout(scale(600, 1800)),
    pytest.mark.skipif(not LONG, reason="long mode only (SWITCHYARD_FAULTS_LONG=1)"),
]

KILLS = scale(1, 3)


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path / "cluster") as cluster:
        yield cluster


def test_kill_the_busiest_leader_during_load(
    private_cluster: LocalCluster, database_url: str, log_dir: Path, unique: str
) -> None:
    settings = make_settings(private_cluster.bootstrap, f"k{unique}", replication_factor=3)

    def faults(ctx: Context) -> None:
        kills = []
        for _ in range(KILLS):
            ctx.wait_progress()
            ctx.load.stop.wait(ctx.rng.uniform(0.5, 3))  # a random instant under load
            led = leaders(private_cluster.bootstrap, settings.topic_prefix)
            victim_id, led_count = led.most_common(1)[0]
            victim = private_cluster.node(victim_id)
            pid = victim.pid()
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            killed = time.time()
            killed_ms = int(killed * 1000)
            progressed = functools.partial(ctx.tail.first_event_after, killed_ms, router_progress)
            wait_for(
                lambda: progressed() is not None,  # noqa: B023 (called before the loop moves on)
                120,
                f"a history event committed after node {victim_id} was killed",
            )
            first = ctx.tail.first_event_after(killed_ms, router_progress) or killed_ms
            ctx.load.stop.wait(ctx.rng.uniform(2, 5))  # the cluster runs on two nodes for a while
            restarted = time.time()
            victim.start(progress=lambda _msg: None)
            wait_for(
                lambda: private_cluster.brokers_seen() == 3, 120, f"node {victim_id} back in the cluster"
            )
            back = time.time()
            kills.append(
                {
                    "node": victim_id,
                    "partitions_led": led_count,
                    "first_committed_event_after_kill_s": round((first - killed_ms) / 1000, 2),
                    "restart_s": round(back - restarted, 2),
                    "wait_progress_after_restart_s": round(ctx.wait_progress(120), 2),
                }
            )
        ctx.extra["cluster_kills"] = kills

    with psycopg.connect(database_url) as conn:  # the scenario's fresh database is reachable
        conn.execute("select 1")
    figures = run_scenario("cluster_broker_kill", settings, database_url, log_dir, faults)
    assert len(figures["cluster_kills"]) == KILLS
