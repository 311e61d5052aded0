"""A hostile tenant cannot crash, stall or slow the engine for another tenant (issue 14).

Two tenants share the same router, executor and projector processes *and* the same internal
partition (both pinned to base partition 0): ``good`` sends ordinary triggers (noop / echo chains)
at a steady rate; ``evil`` sends, interleaved, the hostile records of :mod:`tests.faults.hostile`.
After a warm-up, ``good`` sends all along while ``evil`` sends in bursts: solo and hostile
segments alternate, solo first and last (CI: 4 x 15 s solo, 3 x 20 s hostile). ``good``'s solo
latency comes from the solo segments, so a neighbour's load that drifts during the test (the
machine is shared) weighs on both figures alike; a solo-then-hostile design measured the
neighbours as much as the hostile tenant (p50 ratio 1.24 in one run, 1.77 in the next, same
engine, load average 8 on 2 cores). Then, counted:

* every ``good`` run succeeded: runs completed = triggered, exactly one final event, no seq gap,
  no control event in its history (``evil`` tried to cancel them), no dead letter of ``good``;
* ``good``'s trigger→done latency in the hostile segments (and the first 5 s after each, its
  backlog): p50 within 1.5x its p50 in the solo segments, or within 150 ms of it when that is more
  (asserted; ratios in four CI runs: 0.96, 1.04, 1.30 and 1.52 at a 0.16 s solo median, the 80 ms
  that a ratio allows there being less than evil's extra load costs on 2 cores), p99 reported and held within
  3x the solo p99 (a stall guard: over ~200 runs on a shared 2-core machine, the p99 is the second
  or third slowest run and moves with the neighbours' load, the median does not);
* no engine process exited by itself; ``/readyz`` of every process is ok at the end;
* every hostile record is accounted for: a dead letter with an acceptable, specific
  ``error_kind`` (once), or a run that ended with a final event, or — for the expensive filter
  only — a refusal the router counts (:mod:`tests.faults.accounting`);
* the router's ``/metrics`` stays bounded: less than 2x its size before the hostile phase, no
  made-up tenant name and no 300,000-character name among its ``tenant`` label values;
* PostgreSQL holds every event of the history topic (the projector kept up).

``SWITCHYARD_HOSTILE_ONLY=kind,pattern*`` restricts the hostile stream to some record kinds
(shell-style patterns; for debugging one item at a time).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from services.bus.topics import Topics, TopicSpec, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.registry.definitions import publish
from services.registry.publishing import PublishRefused, publish_signed
from services.workflow.loader import load_definition_text
from services.workflow.problems import DefinitionError
from services.workflow.signing import generate_keypair, private_key_from_b64, sign_definition
from tests.faults.accounting import DlqTail, Outcome, account, run_views
from tests.faults.harness import (
    EventTail,
    LoadGenerator,
    Sent,
    Sink,
    WorkflowSpec,
    Workload,
    drain_events,
    percentile,
    pg_event_count,
    pg_event_figures,
    scale,
    wait_for,
    write_results,
)
from tests.faults.hostile import (
    EVIL,
    EXPENSIVE_FILTER,
    FALLBACK_FILTERS,
    GOOD,
    HostileRecords,
    HostileSender,
    HostileServer,
    costly_workflow,
    evil_workflows,
    good_workflows,
)
from tests.faults.observe import ObservedCluster, ReadinessSampler, counter_value, readiness, scrape
from tests.fixtures.engine import register_tenant

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(scale(900, 3600))]

RATE = 4.0  # good's triggers per second, all along
WARMUP_S = 10
# Alternating segments, solo first and last: solo, hostile, solo, ..., hostile, solo. Each hostile
# segment gets one record of every hostile kind and its share of the ghost-tenant triggers.
SEGMENTS = scale(3, 10)  # hostile segments
SOLO_SEGMENT_S = scale(15, 18)
HOSTILE_SEGMENT_S = scale(20, 30)
#: Good's triggers sent this soon after a hostile segment count as hostile (the backlog it left).
SPILL_S = 5.0
GHOSTS = scale(300, 600)  # made-up tenants, one trigger each
DRAIN_S = 180
PG_CATCH_UP_S = 120
P50_FACTOR = 1.5
#: ... or by at most this much: at a fast solo median (0.16 s in a quiet CI run) 1.5x is 80 ms, less
#: than what evil's extra records (more of them than good's, each bounded) cost on 2 shared cores.
P50_SLACK_S = 0.15
P99_FACTOR = 3.0
METRICS_GROWTH = 2.0
PROCESSES = ["router-r1", "executor-e1", "projector"]
ONLY = frozenset(k for k in os.environ.get("SWITCHYARD_HOSTILE_ONLY", "").split(",") if k) or None


def sign(doc: dict[str, Any], tenant: str, private: str) -> Any:
    definition = load_definition_text(json.dumps(doc), filename=f"{tenant}-{doc['name']}.json")
    return sign_definition(definition, tenant=tenant, key_id="k1", private_key=private_key_from_b64(private))


def setup_good(settings: Settings, sink: Sink, private: str, seed: int) -> Workload:
    """The good tenant's chains, published, as a workload the harness's load generator can drive."""
    good = Workload(settings, sink, 0, seed)
    good.tenants = [GOOD]
    for doc in good_workflows():
        publish(settings, GOOD, sign(doc, GOOD, private), "faults")
        event = doc["trigger"]["event"]
        good.workflows.append(
            WorkflowSpec(GOOD, doc["name"], event, "run_succeeded", len(doc["steps"]), frozenset())
        )
    return good


def setup_evil(settings: Settings, server: HostileServer, private: str) -> dict[str, Any]:
    """Evil's workflows, through the real publish path; the expensive filter if validation takes it."""
    for doc in evil_workflows(server.url):
        publish_signed(settings, sign(doc, EVIL, private), "faults")
    refusals: dict[str, str] = {}
    for expression in (EXPENSIVE_FILTER, *FALLBACK_FILTERS):
        try:
            publish_signed(settings, sign(costly_workflow(expression), EVIL, private), "faults")
        except (DefinitionError, PublishRefused) as exc:
            refusals[expression] = str(exc)[:300]
            continue
        return {"filter": expression, "refused_at_publish": refusals}
    raise AssertionError(f"validation refused every filter of the costly workflow: {refusals}")


def create_ghost_topics(settings: Settings, count: int) -> list[str]:
    """Trigger topics of made-up tenants, created before the router starts (its regex subscription)."""
    names = [f"ghost-{i:04d}" for i in range(count)]
    topics = Topics(settings.topic_prefix)
    ensure_topics(admin_client(settings), [TopicSpec(topics.tenant_triggers(n), 1) for n in names])
    return names


def delete_ghost_topics(settings: Settings, names: list[str]) -> None:
    topics = Topics(settings.topic_prefix)
    admin: AdminClient = admin_client(settings)
    for future in admin.delete_topics(
        [topics.tenant_triggers(n) for n in names], operation_timeout=60
    ).values():
        with contextlib.suppress(Exception):  # best effort: left behind, they are only clutter
            future.result(timeout=120)


def hostile_windows() -> list[tuple[float, float]]:
    """(start, end) of each hostile segment, in seconds from the start of the load."""
    period = SOLO_SEGMENT_S + HOSTILE_SEGMENT_S
    return [(i * period + SOLO_SEGMENT_S, (i + 1) * period) for i in range(SEGMENTS)]


def split_by_segment(sent: dict[str, Sent], started: float) -> tuple[dict[str, Sent], dict[str, Sent]]:
    """Good's triggers sent in solo segments, and in hostile ones (or within SPILL_S after one)."""
    period = SOLO_SEGMENT_S + HOSTILE_SEGMENT_S
    solo: dict[str, Sent] = {}
    hostile: dict[str, Sent] = {}
    for run_id, s in sent.items():
        index, into = divmod(s.sent_at - started, period)
        during = into >= SOLO_SEGMENT_S and index < SEGMENTS
        after = 0 < index <= SEGMENTS and into < SPILL_S
        (hostile if during or after else solo)[run_id] = s
    return solo, hostile


def segment_medians(
    sent: dict[str, Sent], hostile: set[str], started: float, done_ms: dict[str, int]
) -> list[str]:
    """``solo 0.410 (n=52)``, ``hostile ...``, ``spill ...``: good's p50 latency per segment, in order."""
    period = SOLO_SEGMENT_S + HOSTILE_SEGMENT_S
    segments: dict[tuple[int, str], list[float]] = {}
    for run_id, s in sent.items():
        if run_id not in done_ms:
            continue
        index, into = divmod(s.sent_at - started, period)
        in_hostile = into >= SOLO_SEGMENT_S
        kind = "solo" if run_id not in hostile else "hostile" if in_hostile else "spill"
        key = (int(index) * 3 + {"spill": 0, "solo": 1, "hostile": 2}[kind], kind)  # in time order
        segments.setdefault(key, []).append((done_ms[run_id] - s.sent_at * 1000) / 1000)
    return [f"{kind} {statistics.median(v):.3f} (n={len(v)})" for (_, kind), v in sorted(segments.items())]


def waited(check: Callable[[], bool], timeout_s: float, what: str) -> str | None:
    """``wait_for``, with a timeout as the violation it describes (so the figures are still written)."""
    try:
        wait_for(check, timeout_s, what, interval_s=1.0)
    except AssertionError as exc:
        return str(exc)
    return None


def latency_figures(sent: dict[str, Sent], done_ms: dict[str, int]) -> dict[str, Any]:
    """Trigger (produce time) → final event (its ``at``), per run, in seconds."""
    values = [(done_ms[r] - s.sent_at * 1000) / 1000 for r, s in sent.items() if r in done_ms]
    if not values:
        return {"runs": 0}
    return {
        "runs": len(values),
        "p50_s": round(statistics.median(values), 3),
        "p90_s": round(percentile(values, 90) or 0, 3),
        "p99_s": round(percentile(values, 99) or 0, 3),
        "max_s": round(max(values), 3),
    }


def run_phase(
    good: Workload, tail: EventTail, cluster: ObservedCluster, seconds: float, seed: int
) -> dict[str, Sent]:
    """Good's load alone for ``seconds``; returns its triggers once every run has finished."""
    load = LoadGenerator(good, RATE, seed).start()
    load.stop.wait(seconds)
    load.finish()
    sent = load.triggered()
    wait_for(
        lambda: tail.finished(sent) == len(sent) or bool(cluster.check()),
        DRAIN_S,
        f"the good tenant's {len(sent)} runs to finish (finished: {tail.finished(sent)})",
        interval_s=0.25,
    )
    crashes = cluster.check()
    assert not crashes, f"an engine process exited before the hostile phase: {crashes[0]}"
    return sent


def test_hostile_tenant_cannot_crash_stall_or_slow_another(
    fault_settings: Settings, database_url: str, log_dir: Path
) -> None:
    settings = fault_settings
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    started = time.monotonic()
    sink = Sink().start()  # the harness's workload wants one; good's chains make no HTTP calls
    server = HostileServer().start()
    ensure_topics(admin_client(settings), internal_specs(settings))
    good_private, good_public = generate_keypair()
    evil_private, evil_public = generate_keypair()
    # Same base partition: both tenants' runs compete in the same router and executor partition loops.
    register_tenant(settings, GOOD, good_public, base_partition=0, max_concurrent_runs=1000)
    register_tenant(settings, EVIL, evil_public, base_partition=0)
    good = setup_good(settings, sink, good_private, seed)
    costly = setup_evil(settings, server, evil_private)
    ghosts = create_ghost_topics(
        settings, GHOSTS if ONLY is None or any(fnmatch.fnmatchcase("ghost_tenant", p) for p in ONLY) else 0
    )
    setup_s = time.monotonic() - started

    cluster = ObservedCluster(settings, database_url, log_dir)
    tail = EventTail(settings).start()
    dlq = DlqTail(settings).start()
    sampler: ReadinessSampler | None = None
    try:
        cluster.start("projector", None)
        cluster.start("router", "r1")
        cluster.start("executor", "e1")

        # --- warm-up --------------------------------------------------------------------------------
        phase_started = time.monotonic()
        warm = run_phase(good, tail, cluster, WARMUP_S, seed)
        warm_s = time.monotonic() - phase_started
        metrics_before = scrape(cluster, "router-r1")
        unmatched_before = counter_value(
            cluster, "router-r1", "switchyard_triggers", tenant=EVIL, outcome="unmatched"
        )

        # --- good all along; evil's stream in the hostile segments -------------------------------------
        phase_started = time.monotonic()
        sampler = ReadinessSampler(cluster, PROCESSES).start()
        load_started = time.time()  # before the first trigger: segments count from here
        load = LoadGenerator(good, RATE, seed + 1).start()
        records = HostileRecords(settings.topic_prefix, rng, lambda: list(load.triggered()))
        sender = HostileSender(settings, records, ghosts, hostile_windows(), rng, ONLY).start()
        load.stop.wait(sender.duration_s + SOLO_SEGMENT_S)
        items = sender.finish()
        load.finish()
        solo, hostile = split_by_segment(load.triggered(), load_started)
        load_s = time.monotonic() - phase_started

        # --- drain: good's runs finish, every hostile record is accounted for -----------------------
        all_good = {**warm, **solo, **hostile}
        drain_started = time.monotonic()

        def accounting_now() -> Any:
            unmatched = (
                counter_value(cluster, "router-r1", "switchyard_triggers", tenant=EVIL, outcome="unmatched")
                - unmatched_before
            )
            with tail.lock:
                events = list(tail.events)
            return account(items, dlq.snapshot(), run_views(events), int(unmatched), set(all_good))

        def drained() -> bool:
            if cluster.check():
                return True
            if tail.finished(all_good) < len(all_good):
                return False
            return not any(o.how == "unaccounted" for o in accounting_now().outcomes)

        timed_out = [
            problem
            for problem in (
                waited(
                    drained, DRAIN_S, "good's runs to finish and every hostile record to be accounted for"
                ),
                waited(
                    lambda: pg_event_count(database_url) >= tail.distinct() or bool(cluster.check()),
                    PG_CATCH_UP_S,
                    "PostgreSQL to catch up with the history topic",
                ),
            )
            if problem
        ]
        drain_s = time.monotonic() - drain_started
        readyz_during = sampler.close()
        sampler = None

        # --- the counts ------------------------------------------------------------------------------------
        crashes = cluster.check()
        ready_end = {name: readiness(cluster, name) for name in PROCESSES if cluster.processes[name].alive()}
        metrics_after = scrape(cluster, "router-r1") if cluster.processes["router-r1"].alive() else None
        events = drain_events(settings)
        runs = run_views(events)
        accounting = accounting_now()
        pg = pg_event_figures(database_url)
        kafka_ids = {e["event_id"] for e in events}
        done_ms = {r: v.at_terminal[0] for r, v in runs.items() if v.at_terminal}

        good_runs = {r: runs.get(r) for r in all_good}
        not_done = [r for r, v in good_runs.items() if v is None or not v.terminals]
        wrong = [
            r
            for r, v in good_runs.items()
            if v is not None and v.terminals and v.terminals[-1] != "run_succeeded"
        ]
        multi = [r for r, v in good_runs.items() if v is not None and len(v.terminals) > 1]
        gaps = [r for r, v in good_runs.items() if v is not None and v.seq_gap]
        touched = [
            r
            for r, v in good_runs.items()
            if v is not None and any(t.startswith("control_") or t == "run_cancelled" for t in v.types)
        ]
        solo_latency = latency_figures(solo, done_ms)
        hostile_latency = latency_figures(hostile, done_ms)
        by_segment = segment_medians({**solo, **hostile}, set(hostile), load_started, done_ms)

        ghost_set = set(ghosts)
        labels_after = metrics_after.tenant_labels if metrics_after else {}
        ghost_labels = {f: len(v & ghost_set) for f, v in labels_after.items() if v & ghost_set}
        topic_labels = metrics_after.topic_tenant_labels if metrics_after else {}
        ghost_topic_labels = {f: len(v & ghost_set) for f, v in topic_labels.items() if v & ghost_set}
        long_labels = {
            f: max(len(t) for t in v) for f, v in labels_after.items() if any(len(t) > 63 for t in v)
        }
        growth = (
            {
                f: metrics_after.series[f] - metrics_before.series.get(f, 0)
                for f in metrics_after.series
                if metrics_after.series[f] - metrics_before.series.get(f, 0) > 0
            }
            if metrics_after
            else {}
        )
        letters = dlq.snapshot()
        figures: dict[str, Any] = {
            "seed": seed,
            "trigger_rate_per_s": RATE,
            "segments": {
                "hostile": SEGMENTS,
                "solo_s": SOLO_SEGMENT_S,
                "hostile_s": HOSTILE_SEGMENT_S,
                "spill_s": SPILL_S,
            },
            "ghost_tenants": len(ghosts),
            "only": sorted(ONLY) if ONLY else None,
            "costly_filter": costly,
            "good": {
                "runs_triggered": len(all_good),
                "runs_completed": len(all_good) - len(not_done),
                "runs_not_succeeded": len(wrong),
                "runs_with_more_than_one_terminal_event": len(multi),
                "runs_with_a_seq_gap": len(gaps),
                "runs_touched_by_control": len(touched),
                "latency_solo": solo_latency,
                "latency_hostile": hostile_latency,
                "p50_by_segment_s": by_segment,
            },
            "hostile": accounting.figures(),
            "hostile_http_calls": dict(server.calls),
            "dead_letters": {
                "total": len(letters),
                "largest_bytes": max((x.size for x in letters), default=0),
            },
            "router_metrics": {
                "bytes_before": metrics_before.size,
                "bytes_after": metrics_after.size if metrics_after else None,
                "series_growth_by_family": dict(sorted(growth.items(), key=lambda kv: -kv[1])[:10]),
                "ghost_tenant_label_values_by_family": ghost_labels,
                "ghost_tenant_label_values_in_per_topic_families": ghost_topic_labels,
                "label_values_over_63_chars_by_family": long_labels,
            },
            "readyz_during_hostile_phase": readyz_during,
            "readyz_at_end": {name: ok for name, (ok, _) in ready_end.items()},
            "kafka_events_drained": len(events),
            "pg_distinct_event_ids": pg["distinct_event_ids"],
            "pg_projector_rejects": pg["projector_rejects"],
            "crashes": len(crashes),
            "seconds": {
                "setup": round(setup_s, 1),
                "warmup": round(warm_s, 1),
                "segments": round(load_s, 1),
                "drain": round(drain_s, 1),
                "total": round(time.monotonic() - started, 1),
            },
        }

        violations: list[str] = []
        if crashes:
            violations.append(f"{len(crashes)} engine process exits: {crashes[:2]}")
        violations += timed_out
        if not_done:
            violations.append(
                f"{len(not_done)} of {len(all_good)} good runs did not finish, e.g. {not_done[:3]}"
            )
        if wrong:
            violations.append(f"{len(wrong)} good runs did not succeed: {[runs[r].types for r in wrong[:2]]}")
        if multi or gaps:
            violations.append(f"good runs with >1 final event: {multi[:3]}; with a seq gap: {gaps[:3]}")
        if touched:
            violations.append(f"good runs touched by control commands: {touched[:3]}")
        if accounting.good_letters:
            violations.append(f"good's records dead-lettered: {figures['hostile']['good_dead_letters']}")
        by_kind: dict[str, list[Outcome]] = {}
        for outcome in accounting.unaccounted():
            by_kind.setdefault(outcome.item.kind, []).append(outcome)
        for kind, bad in by_kind.items():  # one line per kind: after a crash, hundreds are unaccounted
            sent = sum(1 for o in accounting.outcomes if o.item.kind == kind)
            first = bad[0]
            violations.append(
                f"hostile {kind}: {len(bad)} of {sent} not accounted for, e.g. at {first.item.source}:"
                f" {first.how} ({first.detail})"
                + (f": {'; '.join(first.problems)}" if first.problems else "")
            )
        if "p50_s" in solo_latency and "p50_s" in hostile_latency:
            p50_bound = max(P50_FACTOR * solo_latency["p50_s"], solo_latency["p50_s"] + P50_SLACK_S)
            if hostile_latency["p50_s"] > p50_bound:
                violations.append(
                    f"good's p50 latency {hostile_latency['p50_s']} s during the hostile phase exceeds"
                    f" {p50_bound:.3f} s (the larger of {P50_FACTOR}x its solo p50 {solo_latency['p50_s']} s"
                    f" and that + {P50_SLACK_S} s)"
                )
            if hostile_latency["p99_s"] > P99_FACTOR * solo_latency["p99_s"]:
                violations.append(
                    f"good's p99 latency {hostile_latency['p99_s']} s during the hostile phase exceeds"
                    f" {P99_FACTOR}x its solo p99 {solo_latency['p99_s']} s"
                )
        if metrics_after is not None:
            if metrics_after.size >= METRICS_GROWTH * metrics_before.size:
                violations.append(
                    f"router /metrics grew from {metrics_before.size} to {metrics_after.size} bytes;"
                    f" top series growth: {figures['router_metrics']['series_growth_by_family']}"
                )
            if ghost_labels or long_labels:
                violations.append(
                    f"made-up tenant names in metric labels: {ghost_labels};"
                    f" label values over 63 chars: {long_labels}"
                )
        for name, (ok, report) in ready_end.items():
            if not ok:
                violations.append(f"/readyz of {name} is not ok at the end: {json.dumps(report)[:500]}")
        if pg["distinct_event_ids"] != len(kafka_ids) or pg["ids"] != kafka_ids:
            violations.append(
                f"PostgreSQL has {pg['distinct_event_ids']} distinct event ids, Kafka {len(kafka_ids)}"
            )
        write_results("hostile_tenant", figures, violations)
        assert not violations, "hostile tenant: invariants violated:\n  " + "\n  ".join(violations)
    finally:
        if sampler is not None:
            sampler.close()
        cluster.stop_all()
        tail.close()
        dlq.close()
        server.stop()
        sink.stop()
        if ghosts:
            delete_ghost_topics(settings, ghosts)
