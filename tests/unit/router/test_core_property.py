"""Property: no inbox record and no tick makes the core raise, and every input is accounted for.

Inputs are arbitrary bytes, Avro-framed garbage, and valid inbox envelopes (run requests, step
results, control commands) whose fields take arbitrary values: JSON with lone surrogates (as
escapes), NaN, integers beyond 64 bits, deep nesting, numbers that grow when re-encoded; long
keys, ids and messages. After each record the outbox holds a dead letter or a history event for
it, or it was a duplicate request of a known run. At the end every run's history is gap-free with
one terminal event per life, every record fits the budget, the changelog agrees with memory, and
the slot and queue bookkeeping matches the runs.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts import serde
from services.contracts.catalog import catalog
from services.router.core import ACTIVE
from services.router.state import RunState, RunStatus
from tests.unit.router.fakes import (
    TENANT,
    TOPICS,
    WORKFLOWS,
    Harness,
    history_problems,
)

RUN_IDS = ["r1", "r2", "r3", "r4"]
STEPS = ["a", "b", "receive", "enrich", "pause", "done"]
LIMIT = 32 * 1024

avro_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30)
long_text = st.one_of(avro_text, st.integers(1, 80_000).map(lambda n: "k" * n))
int32 = st.integers(-(2**31), 2**31 - 1)
int64 = st.integers(-(2**63), 2**63 - 1)
# st.text() never yields lone surrogates: mix them in on purpose.
surrogates = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
any_text = st.lists(st.characters() | surrogates, max_size=12).map("".join)
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,  # json.dumps writes lone surrogates as \\udxxx escapes
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(any_text, children, max_size=4),
    max_leaves=20,
)
json_text = st.one_of(
    json_value.map(json.dumps),
    st.integers(1, 400).map(lambda n: "[" * n + "]" * n),  # deep nesting
    st.integers(1, 8000).map(lambda n: "[" + ",".join(["1e15"] * n) + "]"),  # grows when re-encoded
    st.integers(1, 40_000).map(lambda n: json.dumps({"message": "x" * n})),
    st.integers(24_000, 32_000).map(lambda n: json.dumps({"message": "x" * n})),  # near the limit
    avro_text,  # not JSON
)
plain_json = st.dictionaries(st.sampled_from(["message", "x"]), avro_text, max_size=2).map(json.dumps)
some_json = st.one_of(plain_json, json_text)
pool = st.sampled_from(RUN_IDS)  # ids that requests, results and commands share
run_id = st.one_of(pool, long_text)
tenant = st.one_of(st.just(TENANT), avro_text, st.integers(1, 5000).map(lambda n: "t" * n))
known_definition = st.sampled_from([(wf.name, wf.version) for wf in WORKFLOWS])
definition = st.one_of(known_definition, st.tuples(avro_text, int32))
Record = tuple[str, dict[str, Any]]


@st.composite
def run_requested(draw: st.DrawFn, rid: Any, who: Any, wf: Any, data: Any, text: Any = long_text) -> Record:
    name, version = draw(wf)
    return (
        "RunRequested",
        {
            "run_id": draw(rid),
            "tenant": draw(who),
            "workflow": name,
            "version": version,
            "event_type": draw(avro_text),
            "data_json": draw(data),
            "idempotency_key": draw(text),
            "correlation_id": draw(text),
            "requested_at": draw(int64),
            "source": draw(avro_text),
        },
    )


@st.composite
def step_result(draw: st.DrawFn, rid: Any, who: Any, step: Any, attempt: Any, output: Any) -> Record:
    return (
        "StepResult",
        {
            "run_id": draw(rid),
            "tenant": draw(who),
            "step_id": draw(step),
            "attempt": draw(attempt),
            "status": draw(st.sampled_from(["succeeded", "failed"])),
            "output_json": draw(output),
            "error_kind": draw(st.one_of(st.none(), avro_text)),
            "error_message": draw(st.one_of(st.none(), long_text)),
            "retryable": draw(st.booleans()),
            "started_at": 0,
            "finished_at": 0,
            "correlation_id": "c",
            "executor_id": "e",
        },
    )


@st.composite
def control_command(draw: st.DrawFn, rid: Any = None) -> Record:
    return (
        "ControlCommand",
        {
            "command_id": "cmd",
            "kind": draw(st.sampled_from(["cancel", "replay_run", "replay_step", "replay_bulk"])),
            "requester": draw(avro_text),
            "tenant": draw(st.one_of(st.just(TENANT), tenant)),
            "run_id": draw(rid if rid is not None else st.one_of(st.none(), pool, run_id)),
            "step_id": draw(st.one_of(st.none(), st.none(), st.sampled_from(STEPS), long_text)),
            "reason": draw(st.one_of(avro_text, avro_text, long_text)),
            "correlation_id": "cc",
            "issued_at": draw(st.sampled_from([0, 1_000_000_000])),  # stale, or the harness clock
            "filter_json": None,
            "dry_run": False,
        },
    )


INBOX_HEADER = struct.pack(">bI", 0, catalog().current["InboxRecord"].schema_id)
raw = st.one_of(st.binary(max_size=64), st.binary(max_size=64).map(lambda b: INBOX_HEADER + b), st.none())
steps = st.sampled_from(STEPS)
action = st.one_of(
    run_requested(pool, st.just(TENANT), known_definition, some_json, avro_text),  # runs that start
    run_requested(run_id, tenant, definition, json_text),
    step_result(pool, st.just(TENANT), steps, st.integers(1, 3), st.one_of(st.none(), some_json)),
    step_result(pool, st.just(TENANT), steps, st.integers(1, 3), some_json),
    step_result(run_id, tenant, st.one_of(steps, long_text), int32, st.one_of(st.none(), json_text)),
    control_command(),
    raw.map(lambda b: ("raw", b)),
    st.just(("operate", None)),  # a command for a run that exists
    st.just(("progress", None)),  # a result for an attempt that is running now
    st.just(("progress", None)),
    st.floats(0, 30_000).map(lambda s: ("tick", s)),
    st.sampled_from(WORKFLOWS).map(lambda wf: ("untrust", wf)),
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.data())
def test_no_input_makes_the_core_raise_and_every_input_is_accounted_for(data: st.DataObject) -> None:
    h = Harness(
        *WORKFLOWS,
        max_concurrent_runs=2,
        max_record_bytes=LIMIT,
        max_run_output_bytes=8 * 1024,
        finished_run_retention_s=3600,
        max_replay_state_bytes=40_000,
    )
    for _ in range(data.draw(st.integers(1, 30))):
        kind, payload = data.draw(action)
        if kind == "progress":
            running = sorted(
                (r.run_id, step_id, rec.attempt)
                for r in h.state.runs.values()
                for step_id, rec in r.steps.items()
                if rec.status == "running"
            )
            if not running:
                continue
            rid, step_id, attempt = data.draw(st.sampled_from(running))
            output = st.one_of(st.none(), some_json)
            kind, payload = data.draw(
                step_result(st.just(rid), st.just(TENANT), st.just(step_id), st.just(attempt), output)
            )
        if kind == "operate":
            if not h.state.runs:
                continue
            kind, payload = data.draw(control_command(st.sampled_from(sorted(h.state.runs))))
        if kind == "tick":
            h.tick(advance_s=payload)
            continue
        if kind == "untrust":
            h.catalog.untrusted[(TENANT, payload.name, payload.version)] = "key_revoked: test"
            continue
        value = payload if kind == "raw" else serde.encode_inbox(kind, payload)
        existed = kind == "RunRequested" and payload["run_id"] in h.state.runs
        sent = len(h.out.sent)
        h.feed(value)
        new = {s.topic for s in h.out.sent[sent:]}
        assert TOPICS.dlq in new or TOPICS.events in new or existed, (kind, payload)
    check_invariants(h)


def check_invariants(h: Harness) -> None:
    assert all(s.size <= LIMIT for s in h.out.sent)
    # A run id's history restarts at seq 1 when a request comes after the dedupe window expired
    # the finished run: check each life on its own.
    lives: dict[str, list[list[dict[str, Any]]]] = {}
    for event in h.out.events():
        runs = lives.setdefault(event["run_id"], [])
        if event["seq"] == 1 or not runs:
            runs.append([])
        runs[-1].append(event)
    for run_id, runs in lives.items():
        for events in runs:
            assert not history_problems(events), (run_id, [(e["seq"], e["type"]) for e in events])
    state = h.state
    for run_id, run in state.runs.items():
        latest = h.out.state_records(run_id)[-1]
        assert RunState.from_json(serde.decode(latest.value)[1]["snapshot_json"]) == run
        assert run.seq == len(lives[run_id][-1])
    active = sum(1 for r in state.runs.values() if r.status in ACTIVE)
    assert state.admission.active_by_tenant.get(TENANT, 0) == active
    pending = {r.run_id for r in state.runs.values() if r.status == RunStatus.PENDING}
    assert pending <= set(state.admission.pending.get(TENANT, []))
    open_runs = {r.run_id for r in state.runs.values() if not r.status.terminal}
    assert {rid for runs in state.open_runs.values() for rid in runs} == open_runs
    live_steps = sum(
        1 for r in state.runs.values() for rec in r.steps.values() if rec.status in ("running", "retrying")
    )
    assert len(state.timers) <= live_steps
