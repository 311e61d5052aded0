"""Multi-tenancy on a real broker: exact concurrency limits, FIFO pending, rate limits with
backpressure, suspended tenants, tenant taken from the topic, and the noisy neighbour."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from services.bus.clients import plain_producer_config
from services.contracts import serde
from services.observability import metrics
from services.tenancy.admin import read_tenants, save_tenant
from tests.fixtures.engine import Engine, register_tenant
from tests.fixtures.kafka import consume_until

pytestmark = pytest.mark.integration

SLEEPY = """
name: sleepy
version: 1
trigger: {event: work}
steps:
  - {id: s, action: sleep, inputs: {seconds: 0.3}}
"""
QUICK = """
name: quick
version: 1
trigger: {event: ping}
steps:
  - {id: s, action: noop}
"""


def start_engine(engine_factory: Callable[..., Engine], **limits: Any) -> Engine:
    from services.executor.service import run_executor
    from services.router.service import run_router

    eng = engine_factory(tenant_limits=limits)
    assert eng.start("router", run_router, instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)
    return eng


def test_concurrency_limit_is_never_exceeded_and_pending_runs_start_in_arrival_order(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start_engine(engine_factory, max_concurrent_runs=3)
    eng.publish(SLEEPY)
    samples: list[float] = []
    stop_sampling = threading.Event()

    def sample() -> None:  # the router's own gauge, read continuously during the burst
        while not stop_sampling.is_set():
            samples.append(metrics.RUNS_IN_FLIGHT.labels("acme")._value.get())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    keys = [f"burst-{i:02d}" for i in range(15)]
    producer = Producer(plain_producer_config(eng.settings))
    for key in keys:  # one partition of the trigger topic keeps the arrival order total
        record = {
            "event_type": "work",
            "data_json": "{}",
            "idempotency_key": key,
            "correlation_id": None,
            "occurred_at": None,
        }
        producer.produce(
            eng.topics.tenant_triggers("acme"), key="same", value=serde.encode("TriggerEvent", record)
        )
    producer.flush(30)
    run_ids = [eng.run_id("sleepy", k) for k in keys]
    runs = eng.wait_terminal(run_ids, timeout_s=120)
    stop_sampling.set()
    sampler.join()

    # Reconstruct concurrency from the history: all of the tenant's runs are on one partition, so
    # the events topic's offsets give their total order.
    timeline = sorted(
        (e for evs in runs.values() for e in evs), key=lambda e: (e["_partition"], e["_offset"])
    )
    assert len({e["_partition"] for e in timeline}) == 1
    active, peak = set(), 0
    for event in timeline:
        if event["type"] == "run_started":
            active.add(event["run_id"])
            peak = max(peak, len(active))
        elif event["type"] in ("run_succeeded", "run_failed"):
            active.discard(event["run_id"])
    assert peak == 3, f"peak concurrency {peak}"
    assert max(samples) <= 3 and len(samples) > 100
    started_order = [e["run_id"] for e in timeline if e["type"] == "run_started"]
    pending_order = [e["run_id"] for e in timeline if e["type"] == "run_pending"]
    assert started_order == pending_order == run_ids
    assert all(evs[-1]["type"] == "run_succeeded" for evs in runs.values())


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_trigger_rate_limit_holds_and_no_trigger_is_lost(engine_factory: Callable[..., Engine]) -> None:
    rate, burst, count = 20.0, 5, 80
    eng = start_engine(engine_factory, trigger_rate=rate, trigger_burst=burst)
    eng.publish(QUICK)
    keys = [f"r-{i}" for i in range(count)]
    for key in keys:
        eng.trigger("ping", {}, key=key)
    runs = eng.wait_terminal([eng.run_id("quick", k) for k in keys], timeout_s=120)
    pending_at = sorted(evs[0]["at"] for evs in runs.values())
    assert all(evs[0]["type"] == "run_pending" for evs in runs.values())
    span_s = (pending_at[-1] - pending_at[0]) / 1000
    measured = (count - burst) / span_s
    # Tolerance: the bucket admits `burst` at once, then `rate` per second; commits and polling add
    # a little delay, never speed.
    assert measured <= rate * 1.15, f"admitted {measured:.1f}/s with a limit of {rate}/s"
    assert measured >= rate * 0.6, f"admitted only {measured:.1f}/s with a limit of {rate}/s"
    assert len(runs) == count
    throttled = metrics.THROTTLED_SECONDS.labels("acme", "rate")._value.get()
    assert throttled > 1.0


def _dlq_kinds(eng: Engine, want: int) -> list[dict[str, Any]]:
    dlq = Consumer(
        {
            "bootstrap.servers": eng.settings.kafka_bootstrap_servers,
            "group.id": f"dlq-{time.time()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    dlq.subscribe([eng.topics.dlq])
    try:
        seen = consume_until(dlq, lambda ms: len(ms) >= want, 30)
    finally:
        dlq.close()
    return [serde.decode(m.value())[1] for m in seen]


def test_suspended_tenant_is_refused_and_payload_tenant_is_ignored(
    engine_factory: Callable[..., Engine],
) -> None:
    eng = start_engine(engine_factory)
    eng.publish(QUICK)
    # a JSON trigger whose payload claims another tenant still runs as the topic's tenant
    claim = json.dumps(
        {"event_type": "ping", "tenant": "beta", "idempotency_key": "claim", "data": {"tenant": "beta"}}
    ).encode()
    eng.send_raw(claim, key="claim")
    run_id = eng.run_id("quick", "claim")
    events = eng.wait_terminal([run_id])[run_id]
    assert {e["tenant"] for e in events} == {"acme"}
    assert events[0]["detail"]["trigger"]["data"] == {"tenant": "beta"}

    config = read_tenants(eng.settings)["acme"]
    save_tenant(eng.settings, config.model_copy(update={"status": "suspended"}))
    deadline = time.monotonic() + 20
    sent = 0
    while time.monotonic() < deadline:  # the registry update reaches the router asynchronously
        eng.trigger("ping", {}, key=f"while-suspended-{sent}")
        sent += 1
        letters = _dlq_kinds(eng, 1) if sent > 3 else []
        if any(r["error_kind"] == "tenant_suspended" for r in letters):
            break
        time.sleep(0.2)
    letters = _dlq_kinds(eng, 1)
    suspended = [r for r in letters if r["error_kind"] == "tenant_suspended"]
    assert suspended and suspended[0]["tenant"] == "acme"
    assert "suspended" in suspended[0]["error_message"]


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_noisy_neighbour_does_not_slow_the_quiet_tenant(engine_factory: Callable[..., Engine]) -> None:
    eng = start_engine(engine_factory, trigger_rate=50.0, trigger_burst=50)
    public_key = read_tenants(eng.settings)["acme"].keyring_or_empty().keys[0].public_key
    register_tenant(eng.settings, "quiet", public_key, trigger_rate=50.0, trigger_burst=50)
    eng.publish(QUICK)
    eng.publish(QUICK, tenant="quiet")

    def probe(n: int, tag: str) -> list[float]:
        latencies = []
        for i in range(n):
            key = f"{tag}-{i}"
            sent_ms = time.time() * 1000
            eng.trigger("ping", {}, key=key, tenant="quiet")
            run_id = eng.run_id("quick", key, tenant="quiet")
            events = eng.wait_events(run_id, lambda evs: any(e["type"] == "step_scheduled" for e in evs))
            latencies.append(next(e["at"] for e in events if e["type"] == "step_scheduled") - sent_ms)
            time.sleep(0.05)  # the quiet tenant's own pace: about 10 triggers/s with the wait above
        return sorted(latencies)

    probe(5, "warm")
    # The flood comes from another process, as it would in production (a thread here would
    # compete with the router's threads for this interpreter's GIL and measure that instead).
    flood_script = (
        "import sys, time, uuid\n"
        "from confluent_kafka import Producer\n"
        "from services.contracts import serde\n"
        "p = Producer({'bootstrap.servers': sys.argv[1], 'linger.ms': 5})\n"
        "sent = 0\n"
        "while True:\n"
        "    start = time.monotonic()\n"
        "    for _ in range(100):\n"
        "        key = uuid.uuid4().hex\n"
        "        rec = {'event_type': 'ping', 'data_json': '{}', 'idempotency_key': key,\n"
        "               'correlation_id': None, 'occurred_at': None}\n"
        "        p.produce(sys.argv[2], key=key, value=serde.encode('TriggerEvent', rec))\n"
        "        sent += 1\n"
        "    p.poll(0)\n"
        "    print(sent, flush=True)\n"
        "    time.sleep(max(0.0, 0.1 - (time.monotonic() - start)))\n"
    )
    flood_sent = [0]
    alone: list[float] = []
    noisy: list[float] = []
    # Alternate quiet-alone and flooded windows so that background load on the machine weighs
    # on both samples alike.
    for window in range(6):
        alone += probe(25, f"alone-{window}")
        flooder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                flood_script,
                str(eng.settings.kafka_bootstrap_servers),
                eng.topics.tenant_triggers("acme"),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert flooder.stdout is not None
            flooder.stdout.readline()  # flooding has started
            noisy += probe(25, f"noisy-{window}")
        finally:
            flooder.terminate()
            output, _ = flooder.communicate(timeout=30)
            counts = [int(line) for line in output.split()] or [0]
            flood_sent[0] += max(counts)  # records handed to the producer (last progress line)
    alone.sort()
    noisy.sort()

    def quantile(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(len(values) * q))]

    report = {
        "alone_p50": statistics.median(alone),
        "alone_p95": quantile(alone, 0.95),
        "alone_p99": quantile(alone, 0.99),
        "noisy_p50": statistics.median(noisy),
        "noisy_p95": quantile(noisy, 0.95),
        "noisy_p99": quantile(noisy, 0.99),
        "flood_sent": flood_sent[0],
    }
    print("noisy neighbour:", json.dumps(report))
    assert flood_sent[0] >= 2000
    assert metrics.THROTTLED_SECONDS.labels("acme", "rate")._value.get() > 0
    # The median is held to 1.5x. The p95 (the 8th-slowest of 150 probes) sits in a heavy tail on
    # a 2-core machine running the broker, PostgreSQL, the engine and the flooding process (one
    # quiet CI run: alone p95 32 ms but p99 110 ms; noisy p95 64 ms), so it is held to 1.5x plus
    # 50 ms: an unthrottled neighbour (1,000 triggers/s against a router that completes ~600
    # steps/s here) would put the quiet tenant's triggers behind a backlog growing by hundreds of
    # runs a second, far outside that bound. The p99 (the second-slowest) moves 3x between runs
    # of the same code: a stall guard only.
    assert report["noisy_p50"] <= 1.5 * report["alone_p50"] + 5, report
    assert report["noisy_p95"] <= 1.5 * report["alone_p95"] + 50, report
    assert report["noisy_p99"] <= 3 * report["alone_p99"] + 10, report
