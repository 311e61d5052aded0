"""Broker failures on a private three-node cluster under load, with two of each engine process (issue 18).

One cluster (tests/cluster/support.py; RF 3, min ISR 2, unclean election off) serves the module;
each scenario runs on its own topic prefix, replicated 3, with two routers, two executors and two
projectors (tests/faults/scenario.py: same load, same counted invariants as every scenario):

* ``leader_kill`` — SIGKILL of the node leading most of the scenario's partitions, restart;
* ``coordinator_kill`` — SIGKILL of the transaction coordinator of router r1's core transactional
  id, restart;
* ``rolling_restart`` — each node in turn stopped (SIGTERM: controlled shutdown) and started, the
  next one only once every replica is back in sync (as an operator upgrades a cluster);
* ``pause`` — SIGSTOP of one node past the consumer and broker session timeouts, then SIGCONT.

Each fault reports the recovery time to committed progress: from the fault to the first history
event created after it, and to the first such event on *every* history partition in use (two routers
share them: one stalled router shows only in the second figure). CI mode runs the four faults once
each in one scenario (one cluster start, one engine, one drain); long mode
(``SWITCHYARD_FAULTS_LONG=1``) runs each as its own scenario, 10 rounds. Part of ``make
test-slow`` (CI); ``SWITCHYARD_FAULTS_CLUSTER=0`` skips it on a machine too small for three more
brokers (~1 GB).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.devinfra.kafka_cluster import NODES, LocalCluster
from services.devinfra.kafka_local import LauncherError
from tests.cluster.support import (
    group_coordinator,
    leaders,
    offsets_leader,
    running_cluster,
    transaction_coordinator,
    under_replicated,
    warm_up,
)
from tests.faults.harness import LONG, Recovery, scale, wait_for
from tests.faults.scenario import Context, run_scenario
from tests.fixtures.engine import make_settings

SKIPPED = not LONG and os.environ.get("SWITCHYARD_FAULTS_CLUSTER", "") in ("0", "false", "no")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.timeout(scale(1800, 7200)),
    pytest.mark.skipif(SKIPPED, reason="SWITCHYARD_FAULTS_CLUSTER=0: see tests/faults/README.md"),
]

ROUNDS = scale(1, 10)
PAUSE_S = 14.0  # past the consumers' session timeout (10 s) and the brokers' (9 s)
PROGRESS_TIMEOUT_S = 180
Fault = Callable[[Context, LocalCluster, int], dict[str, Any]]


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    try:
        with running_cluster(tmp_path_factory.mktemp("fault-cluster")) as cluster:
            warm_up(cluster.bootstrap)
            yield cluster
    except LauncherError as exc:
        pytest.fail(f"no Kafka cluster for these scenarios: {exc}", pytrace=False)


# --- measuring ---------------------------------------------------------------------------------------------


def progress_after(ctx: Context, fault_ms: int) -> tuple[float | None, float | None]:
    """Seconds from ``fault_ms`` to the first history event created after it, and to the first such
    event on every history partition that carried the scenario's runs before it (None while there
    is none). Only those: the tenants' runs are placed on some of the internal partitions, and a
    partition no tenant is placed on never has an event to wait for."""
    with ctx.tail.lock:
        firsts: dict[int, int] = {}
        active: set[int] = set()
        for event in ctx.tail.events:
            part = event["_partition"]
            if event["at"] > fault_ms:
                firsts[part] = min(firsts.get(part, event["at"]), event["at"])
            else:
                active.add(part)
    if not firsts:
        return None, None
    first = (min(firsts.values()) - fault_ms) / 1000
    if not active <= firsts.keys():
        return round(first, 2), None
    every = (max(firsts[part] for part in active or firsts) - fault_ms) / 1000
    return round(first, 2), round(every, 2)


def wait_recovered(ctx: Context, fault_ms: int, what: str) -> dict[str, Any]:
    """Wait until every history partition in use committed an event created after the fault; recorded as
    a recovery of ``what`` (none within the deadline is a violation, reported with the figures)."""
    with contextlib.suppress(AssertionError):
        wait_for(
            lambda: progress_after(ctx, fault_ms)[1] is not None, PROGRESS_TIMEOUT_S, what, interval_s=0.2
        )
    first, every = progress_after(ctx, fault_ms)
    ctx.record(Recovery(what, fault_ms / 1000, every))
    figures: dict[str, Any] = {"first_event_s": first, "every_partition_s": every}
    if every is None:  # which partitions stalled, and since when
        with ctx.tail.lock:
            last: dict[int, int] = {}
            for event in ctx.tail.events:
                last[event["_partition"]] = max(last.get(event["_partition"], 0), event["at"])
        figures["last_event_before_fault_s"] = {
            p: round((fault_ms - at) / 1000, 2) for p, at in sorted(last.items()) if at <= fault_ms
        }
    return figures


def wait_whole(cluster: LocalCluster, prefix: str) -> float:
    """Seconds until the cluster lists three brokers and every replica is in sync again."""
    return wait_for(
        lambda: cluster.brokers_seen() == NODES and under_replicated(cluster.bootstrap, prefix) == 0,
        180,
        "all three nodes back with every replica in sync",
        interval_s=0.5,
    )


def roles(ctx: Context, cluster: LocalCluster, node_id: int) -> dict[str, Any]:
    """What node ``node_id`` is to the engine now (partitions led, coordinator of router r1)."""
    prefix = ctx.settings.topic_prefix
    return {
        "node": node_id,
        "partitions_led": leaders(cluster.bootstrap, prefix).get(node_id, 0),
        "r1_core_txn_coordinator": transaction_coordinator(cluster.bootstrap, f"{prefix}.router.core.r1")
        == node_id,
        "router_core_group_coordinator": group_coordinator(cluster.bootstrap, f"{prefix}.router.core")
        == node_id,
    }


def kill_restart(ctx: Context, cluster: LocalCluster, node_id: int) -> dict[str, Any]:
    """SIGKILL node ``node_id`` at once, wait for committed progress on every partition without it,
    leave it down 2-5 s more, restart it and wait until the cluster is whole."""
    node = cluster.node(node_id)
    figures = roles(ctx, cluster, node_id)
    pid = node.pid()
    assert pid is not None, f"node {node_id} is not running"
    os.kill(pid, signal.SIGKILL)
    killed_ms = int(time.time() * 1000)
    # Until the JVM has exited, its pid still looks alive and start() would wait for it to answer.
    wait_for(lambda: not node.running(), 30, f"node {node_id} to exit")
    figures.update(wait_recovered(ctx, killed_ms, "node killed"))
    ctx.load.stop.wait(ctx.rng.uniform(2, 5))  # the cluster runs on two nodes for a while
    restarted = time.monotonic()
    node.start(progress=lambda _msg: None)
    figures["back_in_sync_s"] = round(
        time.monotonic() - restarted + wait_whole(cluster, ctx.settings.topic_prefix), 2
    )
    return figures


# --- the faults ------------------------------------------------------------------------------------------


def leader_kill(ctx: Context, cluster: LocalCluster, _round: int) -> dict[str, Any]:
    victim, _ = leaders(cluster.bootstrap, ctx.settings.topic_prefix).most_common(1)[0]
    return kill_restart(ctx, cluster, victim)


def coordinator_kill(ctx: Context, cluster: LocalCluster, _round: int) -> dict[str, Any]:
    victim = transaction_coordinator(cluster.bootstrap, f"{ctx.settings.topic_prefix}.router.core.r1")
    return kill_restart(ctx, cluster, victim)


def rolling_restart(ctx: Context, cluster: LocalCluster, _round: int) -> dict[str, Any]:
    order = ctx.rng.sample(range(1, NODES + 1), NODES)
    steps = []
    for node_id in order:
        node = cluster.node(node_id)
        figures = roles(ctx, cluster, node_id)
        stopping_ms = int(time.time() * 1000)
        started = time.monotonic()
        node.stop()  # SIGTERM: a controlled shutdown moves its leaderships away first
        figures["stop_s"] = round(time.monotonic() - started, 2)
        node.start(progress=lambda _msg: None)
        figures["back_in_sync_s"] = round(
            time.monotonic() - started + wait_whole(cluster, ctx.settings.topic_prefix), 2
        )
        figures.update(wait_recovered(ctx, stopping_ms, "node restarted"))
        steps.append(figures)
    return {"order": order, "nodes": steps}


def pause(ctx: Context, cluster: LocalCluster, _round: int) -> dict[str, Any]:
    node_id = ctx.rng.randint(1, NODES)
    figures = roles(ctx, cluster, node_id)
    pid = cluster.node(node_id).pid()
    assert pid is not None, f"node {node_id} is not running"
    os.kill(pid, signal.SIGSTOP)
    paused_ms = int(time.time() * 1000)
    with contextlib.suppress(AssertionError):  # none while it is frozen: it resumes, then we wait
        wait_for(lambda: progress_after(ctx, paused_ms)[1] is not None, PAUSE_S, "progress during the pause")
    remaining = PAUSE_S - (time.time() * 1000 - paused_ms) / 1000
    if remaining > 0:
        ctx.load.stop.wait(remaining)
    os.kill(pid, signal.SIGCONT)
    figures["paused_s"] = round((time.time() * 1000 - paused_ms) / 1000, 2)
    figures.update(wait_recovered(ctx, paused_ms, "node paused"))
    figures["back_in_sync_s"] = round(wait_whole(cluster, ctx.settings.topic_prefix), 2)
    return figures


FAULTS: dict[str, Fault] = {
    "leader_kill": leader_kill,
    "coordinator_kill": coordinator_kill,
    "rolling_restart": rolling_restart,
    "pause": pause,
}
# CI: the four faults once each in one scenario (one engine start and drain); long: one scenario each.
GROUPS = [[name] for name in FAULTS] if LONG else [list(FAULTS)]


@pytest.mark.parametrize("names", GROUPS, ids=["+".join(g) for g in GROUPS])
def test_cluster_faults_under_load(
    names: list[str], private_cluster: LocalCluster, database_url: str, log_dir: Path, unique: str
) -> None:
    settings = make_settings(private_cluster.bootstrap, f"c{unique}", replication_factor=3)
    private_cluster.start(progress=lambda _msg: None)  # whole, whatever the scenario before left
    wait_whole(private_cluster, settings.topic_prefix)

    def faults(ctx: Context) -> None:
        # The placement rule behind transaction_coordinator, checked on a group the broker names.
        group = f"{settings.topic_prefix}.router.core"
        assert group_coordinator(private_cluster.bootstrap, group) == offsets_leader(
            private_cluster.bootstrap, group
        ), "Kafka's coordinator placement rule does not hold here"
        for name in names:
            rounds = []
            for round_ in range(ROUNDS):
                ctx.wait_progress()
                ctx.load.stop.wait(ctx.rng.uniform(0.5, 3))  # a random instant under load
                figures = FAULTS[name](ctx, private_cluster, round_)
                # Progress as it goes: a scenario cut short by its timeout still shows each fault.
                print(f"[cluster faults] {name} {round_ + 1}/{ROUNDS}: {json.dumps(figures)}", flush=True)
                rounds.append(figures)
            ctx.extra[name] = rounds

    with psycopg.connect(database_url) as conn:  # the scenario's fresh database is reachable
        conn.execute("select 1")
    scenario = "cluster_" + ("faults" if len(names) > 1 else names[0])
    figures = run_scenario(
        scenario, settings, database_url, log_dir, faults, instances=2, warmup_timeout_s=300
    )
    assert all(len(figures[name]) == ROUNDS for name in names)
