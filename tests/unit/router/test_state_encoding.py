"""Run state snapshots: version 2 (compact arrays) round-trips; version 1 (named fields, what
routers before it wrote into the changelog) still restores."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.router import state
from services.router.state import RunState, RunStatus, StepRecord

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
_maybe_int = st.none() | st.integers(0, 2**53)
_steps = st.builds(
    StepRecord,
    status=st.sampled_from(["pending", "running", "succeeded", "failed", "retrying", "skipped"]),
    attempt=st.integers(0, 50),
    deadline_ms=_maybe_int,
    retry_at_ms=_maybe_int,
    output=st.none() | st.dictionaries(st.text(max_size=5), _json, max_size=3),
    error_kind=st.none() | st.text(max_size=10),
    error_message=st.none() | st.text(max_size=30),
    retry_base=st.integers(0, 5),
    output_bytes=st.integers(0, 10_000),
)
_runs = st.builds(
    RunState,
    run_id=st.uuids().map(str),
    tenant=st.text(min_size=1, max_size=10),
    workflow=st.text(min_size=1, max_size=10),
    version=st.integers(1, 1000),
    partition=st.integers(0, 63),
    correlation_id=st.text(max_size=20),
    idempotency_key=st.text(max_size=20),
    trigger=st.fixed_dictionaries({"event": st.text(max_size=10), "data": _json}),
    arrival=st.integers(0, 2**40),
    created_ms=st.integers(0, 2**45),
    status=st.sampled_from(list(RunStatus)),
    seq=st.integers(0, 10_000),
    steps=st.dictionaries(st.text(min_size=1, max_size=8), _steps, max_size=6),
    finished_ms=_maybe_int,
    replays=st.integers(0, 5),
    compacted=st.none() | st.sampled_from(["retention", "count"]),
    commands=st.dictionaries(st.text(max_size=8), st.integers(0, 2**45), max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(_runs)
def test_version_2_round_trips_and_version_1_restores_the_same_run(run: RunState) -> None:
    text = run.to_json()
    assert text.startswith("[2,")
    assert RunState.from_json(text) == run
    assert RunState.from_json(text.encode("utf-8")) == run
    assert RunState.from_json(run.to_json_v1()) == run


def test_layout_is_the_dataclasses_field_order() -> None:
    # from_json builds the dataclasses positionally: a field may only be appended, and to both.
    assert tuple(f.name for f in fields(RunState)) == state._RUN_FIELDS
    assert tuple(f.name for f in fields(StepRecord)) == state._STEP_FIELDS


#: A snapshot exactly as the router wrote it before version 2 (named fields, one step done).
V1_SNAPSHOT = (
    '{"run_id":"3f2c6a9e-0000-5000-8000-000000000001","tenant":"acme","workflow":"chain",'
    '"version":3,"partition":1,"correlation_id":"c-1","idempotency_key":"k-1",'
    '"trigger":{"event":"demo.linear","data":{"message":"Zoë"}},"arrival":7,'
    '"created_ms":1764500000000,"status":"running","seq":4,"steps":{"a":{"status":"succeeded",'
    '"attempt":1,"deadline_ms":null,"retry_at_ms":null,"output":{"ok":true},"error_kind":null,'
    '"error_message":null,"retry_base":0,"output_bytes":11},"b":{"status":"running","attempt":2,'
    '"deadline_ms":1764500030000,"retry_at_ms":null,"output":null,"error_kind":"timeout",'
    '"error_message":"slow","retry_base":1,"output_bytes":0}},"finished_ms":null,"replays":1,'
    '"compacted":null,"commands":{"cmd-1":1764500000001}}'
)


def test_a_version_1_snapshot_restores_and_is_rewritten_as_version_2() -> None:
    run = RunState.from_json(V1_SNAPSHOT)
    assert run.status is RunStatus.RUNNING
    assert run.steps["a"] == StepRecord("succeeded", 1, None, None, {"ok": True}, None, None, 0, 11)
    assert run.steps["b"] == StepRecord("running", 2, 1764500030000, None, None, "timeout", "slow", 1, 0)
    assert run.trigger == {"event": "demo.linear", "data": {"message": "Zoë"}}
    assert (run.seq, run.replays, run.commands) == (4, 1, {"cmd-1": 1764500000001})
    again = run.to_json()
    assert again.startswith("[2,") and len(again) < len(V1_SNAPSHOT) * 0.7
    assert RunState.from_json(again) == run
    written = orjson.loads(run.to_json_v1())
    assert written.pop("parent") is None  # fields added since are written with their defaults
    assert all(step.pop("child") is None for step in written["steps"].values())
    assert written == orjson.loads(V1_SNAPSHOT)


def _sample() -> RunState:
    return RunState.from_json(V1_SNAPSHOT)


def test_version_2_with_fewer_fields_reads_defaults_and_extra_fields_are_dropped() -> None:
    full: list[Any] = orjson.loads(_sample().to_json())
    older = full[: 1 + state._RUN_FIELDS.index("steps") + 1]  # no finished_ms, replays, ...
    older[-1] = {k: v[:2] for k, v in older[-1].items()}  # steps with status and attempt only
    run = RunState.from_json(orjson.dumps(older))
    assert (run.replays, run.commands, run.compacted) == (0, {}, None)
    assert run.steps["b"] == StepRecord("running", 2)
    newer = [*full, "a field of a later version"]
    newer[1 + state._RUN_FIELDS.index("steps")]["a"].append("later")
    assert RunState.from_json(orjson.dumps(newer)) == _sample()


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown version"):
        RunState.from_json("[3, 1, 2]")


def test_unwritable_legacy_data_is_made_writable_in_version_2() -> None:
    run = _sample()
    run.trigger = {"event": "e", "data": {"t": "\ud800", "n": 2**70}}
    restored = RunState.from_json(run.to_json())
    assert restored.trigger["data"] == {"t": "\\ud800", "n": float(2**70)}
