"""The restore's fast read of a changelog record gives what the Avro decoder gives, or defers to it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.contracts import serde
from services.contracts.catalog import catalog
from services.contracts.records import decode_router_state
from services.contracts.serde import ContractError
from services.router.state import RunState, StepRecord
from services.router.state_record import snapshot_of


def record(run_id: str, tenant: str, snapshot: str, updated_at: int = 1_764_500_000_000) -> bytes:
    return serde.encode(
        "RouterState",
        {"run_id": run_id, "tenant": tenant, "snapshot_json": snapshot, "updated_at": updated_at},
    )


def _header(schema: str) -> bytes:
    return serde._HEADER.pack(serde.MAGIC, catalog().current[schema].schema_id)


@pytest.mark.parametrize(
    ("run_id", "tenant", "snapshot", "updated_at"),
    [
        ("r-1", "acme", '[2,"r-1"]', 0),
        ("r" * 63, "t" * 64, "x" * 10_000, -1),  # one- and two-byte lengths (the latter: fastavro)
        ("rün", "tenänt", '["grüße", "\\ud800"]', 2**62),  # non-ASCII ids (fastavro); an escape stays
        ("", "", "", 1),
    ],
)
def test_the_snapshot_is_the_avro_decoders(run_id: str, tenant: str, snapshot: str, updated_at: int) -> None:
    value = record(run_id, tenant, snapshot, updated_at)
    fast = snapshot_of(value)
    assert (fast.decode() if isinstance(fast, bytes) else fast) == snapshot
    assert decode_router_state(value)["snapshot_json"] == snapshot


def test_a_record_of_ascii_ids_below_64_characters_takes_the_fast_path() -> None:
    assert (
        snapshot_of(record("d0f3f4c6-da74-577c-b21e-7d785f3b49d7", "acme", "é" * 300)) == ("é" * 300).encode()
    )


@pytest.mark.parametrize(
    ("mangle", "kind"),
    [
        (lambda v: v + b"\x00", "bad_avro"),  # trailing bytes
        (lambda v: v[:-3], "bad_avro"),  # truncated
        (lambda v: v[:5] + b"\x03" + v[6:], "bad_avro"),  # negative run id length
        (lambda v: v[:6] + b"\xff" + v[7:], "bad_avro"),  # a run id that is not UTF-8
        (lambda v: b"{" + v[1:], "bad_framing"),
        (lambda v: _header("DeadLetter") + v[5:], "wrong_schema"),
    ],
)
def test_what_the_fast_path_cannot_read_gets_the_decoders_error(
    mangle: Callable[[bytes], bytes], kind: str
) -> None:
    value = mangle(record("r-1", "acme", '[2,"r-1"]'))
    with pytest.raises(ContractError) as raised:
        snapshot_of(value)
    assert raised.value.kind == kind


def test_a_snapshot_read_from_bytes_is_the_one_read_from_text() -> None:
    """The restore hands the snapshot's bytes to ``from_json``: the strict and lenient (state
    written before the strict encoder) reads give the run the text gives."""
    run = RunState(
        run_id="r-1",
        tenant="acme",
        workflow="wf",
        version=1,
        partition=0,
        correlation_id="c",
        idempotency_key="grüße",
        trigger={"event": "e", "data": {"t": "ü", "n": [1, 2.5, None]}},
        arrival=1,
        created_ms=2,
        steps={"a": StepRecord(status="running", attempt=1, deadline_ms=5)},
    )
    for text in (run.to_json(), run.to_json_v1()):
        assert RunState.from_json(text.encode()) == RunState.from_json(text) == run
    legacy = run.to_json().replace(
        '"ü"', '"\\ud800"'
    )  # a lone surrogate escape: only the lenient read takes it
    assert RunState.from_json(legacy.encode()) == RunState.from_json(legacy)
    assert RunState.from_json(legacy.encode()).trigger["data"]["t"] == "\\ud800"


def test_runs_read_back_share_one_copy_of_their_tenant_workflow_and_event_names() -> None:
    run = RunState("r-1", "acme", "wf", 1, 0, "c", "k", {"event": "e.v", "data": {}}, 1, 2)
    first, second = (RunState.from_json(run.to_json().encode()) for _ in range(2))
    assert first == second == run
    assert first.tenant is second.tenant and first.workflow is second.workflow
    assert first.trigger["event"] is second.trigger["event"]
