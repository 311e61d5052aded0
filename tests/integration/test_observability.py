"""Observability end to end on a real broker and PostgreSQL: run_services with the metrics port on.

Router, executor and projector run under :func:`services.runtime.run_services` (plus a gate
service that holds readiness), workflows run (one of them fails after retries, so retry and DLQ
counters move) and ``/metrics``, ``/healthz`` and ``/readyz`` are read over HTTP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest

from services.executor.service import run_executor
from services.projector.runner import run_projector
from services.router.service import run_router
from services.runtime import ServiceFn
from tests.fixtures.engine import Engine
from tests.integration.test_observability_support import Samples, Served, serve, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """Already migrated (a template copy): the projector's start-up migration is a no-op here."""
    return migrated_database_url


CHAIN = """
name: obs-chain
version: 1
trigger: {event: obs.go}
steps:
  - {id: a, action: echo, inputs: {msg: "${{ trigger.data.msg }}"}}
  - {id: b, action: noop, needs: [a]}
"""

FLAKY = """
name: obs-flaky
version: 1
trigger: {event: obs.flaky}
steps:
  - id: boom
    action: fail
    inputs: {error_kind: upstream_down}
    retry: {max_attempts: 2, initial_backoff: 0.05, max_backoff: 0.05}
"""

SERVICES: dict[str, ServiceFn] = {"router": run_router, "executor": run_executor, "projector": run_projector}


def _service_ready(served: Served, name: str) -> bool:
    _, body = served.json("/readyz")
    return bool(body["services"][name]["ready"])


@pytest.fixture
def served(engine_factory: Callable[..., Engine], database_url: str) -> Served:
    return serve(engine_factory(), SERVICES, database_url=database_url)


def test_health_and_readiness(served: Served) -> None:
    status, body = served.json("/healthz")
    assert status == 200 and body["status"] == "ok"
    assert set(body["services"]) == {"router", "executor", "projector", "gate"}

    status, body = served.json("/readyz")
    assert status == 503, body  # the gate service is not ready yet, whatever the others do
    assert body["services"]["gate"]["ready"] is False

    for name in SERVICES:
        wait_for(f"{name} ready", functools.partial(_service_ready, served, name), timeout_s=60)
    status, body = served.json("/readyz")
    assert status == 503 and body["services"]["gate"]["ready"] is False

    served.gate.set()
    body = wait_for("/readyz 200", lambda: (lambda r: r[0] == 200 and r[1])(served.json("/readyz")))
    assert body["dependencies"]["kafka"]["ok"] is True
    assert body["dependencies"]["database"]["ok"] is True
    assert served.scrape().value("switchyard_service_ready", service="router") in (0.0, 1.0)
    wait_for("service_ready gauges", lambda: served.scrape().value("switchyard_service_ready") == 4)

    status, _ = served.get("/nope")
    assert status == 404


def test_metrics_move_as_runs_progress(served: Served) -> None:
    served.gate.set()
    eng = served.engine
    wait_for("/readyz 200", lambda: served.get("/readyz")[0] == 200, timeout_s=60)
    eng.publish(CHAIN)
    eng.publish(FLAKY)
    before = served.scrape()
    tenant = eng.tenant

    ok_runs = [eng.run_id("obs-chain", eng.trigger("obs.go", {"msg": f"m{i}"})) for i in range(5)]
    bad_run = eng.run_id("obs-flaky", eng.trigger("obs.flaky", {}))
    events = eng.wait_terminal([*ok_runs, bad_run], timeout_s=90)
    assert events[bad_run][-1]["type"] == "run_failed"

    def settled() -> Samples | None:
        now = served.scrape()
        finished_ok = now.value("switchyard_runs_finished_total", tenant=tenant, workflow="obs-chain")
        projected = now.value("switchyard_projector_events_total", tenant=tenant, outcome="applied")
        projected_before = before.value("switchyard_projector_events_total", tenant=tenant, outcome="applied")
        lag = now.matching("switchyard_consumer_lag", tenant=tenant)
        caught_up = lag and all(value == 0 for _, value in lag)
        # The lag collector samples every few seconds: wait until it has seen all 6 triggers, or
        # "lag 0" may be a sample taken before they were written.
        trigger_topic = f"{served.settings.topic_prefix}.tenant.{tenant}.triggers"
        seen_all = now.value("switchyard_topic_end_offset", topic=trigger_topic) == 6
        total = sum(len(e) for e in events.values())
        if finished_ok >= 5 and projected - projected_before >= total and caught_up and seen_all:
            return now
        return None

    after: Samples = wait_for("counters to settle and lag to drain", settled, timeout_s=60)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    # runs by outcome, retries, dead letters
    assert delta("switchyard_runs_started_total", tenant=tenant, workflow="obs-chain") == 5
    finished = "switchyard_runs_finished_total"
    assert delta(finished, tenant=tenant, workflow="obs-chain", state="succeeded") == 5
    assert delta(finished, tenant=tenant, workflow="obs-flaky", state="failed") == 1
    assert delta("switchyard_step_retries_total", tenant=tenant, workflow="obs-flaky") == 1
    assert delta("switchyard_dlq_records_total", service="router.core", tenant=tenant) >= 1
    assert {lbl["reason"] for lbl, _ in after.matching("switchyard_dlq_records_total", tenant=tenant)}
    assert delta("switchyard_triggers_total", tenant=tenant, outcome="matched") == 6

    # latency histograms: per service, kind/action and tenant, with explicit buckets
    assert delta("switchyard_handler_seconds_count", service="router.intake", tenant=tenant) == 6
    assert delta("switchyard_handler_seconds_count", service="router.core", tenant=tenant) > 6
    assert delta("switchyard_handler_seconds_count", service="executor", tenant=tenant) >= 12
    assert delta("switchyard_action_seconds_count", action="echo", tenant=tenant, outcome="succeeded") == 5
    assert delta("switchyard_action_seconds_count", action="fail", tenant=tenant) == 2
    executor_buckets = after.matching("switchyard_handler_seconds_bucket", service="executor")
    buckets = {lbl["le"] for lbl, _ in executor_buckets}
    assert {"0.0005", "60.0", "+Inf"} <= buckets

    # transactions: commit latency per service, records in and out
    for service in ("router.intake", "router.core", "executor"):
        assert delta("switchyard_transaction_seconds_count", service=service) > 0, service
        assert delta("switchyard_transaction_records_total", service=service, direction="in") > 0, service

    # runs by state and per tenant gauges (all finished: nothing in flight or pending)
    assert after.matching("switchyard_runs_in_flight", tenant=tenant)
    assert after.value("switchyard_runs_in_flight", tenant=tenant) == 0
    assert after.value("switchyard_runs_pending", tenant=tenant) == 0
    states = {lbl["state"] for lbl, _ in after.matching("switchyard_runs_by_state", tenant=tenant)}
    assert "running" in states

    # consumer lag per group, topic, partition and tenant; end offsets for throughput
    prefix = served.settings.topic_prefix
    groups = {lbl["group"] for lbl, _ in after.matching("switchyard_consumer_lag")}
    expected_groups = {f"{prefix}.{g}" for g in ("router.core", "router.intake", "executor", "projector")}
    assert expected_groups <= groups
    triggers = after.matching("switchyard_consumer_lag", group=f"{prefix}.router.intake", tenant=tenant)
    assert {lbl["topic"] for lbl, _ in triggers} == {f"{prefix}.tenant.{tenant}.triggers"}
    assert {lbl["partition"] for lbl, _ in triggers} == {"0", "1"}
    inbox = after.matching("switchyard_consumer_lag", group=f"{prefix}.router.core", topic=f"{prefix}.inbox")
    assert len(inbox) == served.settings.internal_partitions and {lbl["tenant"] for lbl, _ in inbox} == {""}
    assert after.value("switchyard_topic_end_offset", topic=f"{prefix}.tenant.{tenant}.triggers") == 6
    assert after.value("switchyard_lag_collections_total", outcome="ok") > 0

    # projector
    assert after.value("switchyard_projector_assigned_partitions") >= 1
    assert after.matching("switchyard_projector_lag_seconds")


def test_status_once_reads_kafka_and_metrics(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    import typer
    from typer.testing import CliRunner

    from services.commands import status
    from services.config import get_settings

    served.gate.set()
    eng = served.engine
    wait_for("/readyz 200", lambda: served.get("/readyz")[0] == 200, timeout_s=60)
    eng.publish(FLAKY)
    run_id = eng.run_id("obs-flaky", eng.trigger("obs.flaky", {}))
    eng.wait_terminal([run_id], timeout_s=60)
    wait_for("the DLQ counter", lambda: served.scrape().value("switchyard_dlq_records_total", tenant="acme"))

    app = typer.Typer()
    status.register(app)
    app.callback()(lambda: None)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", str(served.settings.kafka_bootstrap_servers))
    get_settings.cache_clear()
    try:
        prefix = served.settings.topic_prefix
        args = ["status", "--once", "--interval", "0.2", "--prefix", prefix, "--metrics-url", served.base]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"sources: kafka, {served.base}/metrics" in out
    for group in ("router.core", "router.intake", "executor"):
        assert f"{prefix}.{group}" in out
    assert f"{prefix}.tenant.acme.triggers" in out
    assert "Throughput" in out and "router.core: upstream_down" in out
    assert f"{prefix}.dlq" in out
    assert "Runs per tenant" in out and "acme" in out
