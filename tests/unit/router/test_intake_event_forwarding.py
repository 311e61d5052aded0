"""Intake forwards an event some ``wait_for`` step waits for to every partition of the tenant's slices."""

from __future__ import annotations

import json
from typing import Any

from services.bus.placement import tenant_partitions
from services.contracts import serde
from services.workflow.compiled import compile_workflow
from services.workflow.loader import load_definition_text
from tests.unit.router.intake_fakes import TOPICS, Produced, harness, run_requests, tenant, workflow

WAITER = compile_workflow(
    load_definition_text(
        json.dumps(
            {
                "name": "waiter",
                "version": 1,
                "trigger": {"event": "engagement.opened"},
                "steps": [{"id": "signed", "wait_for": {"event": "doc.signed"}}],
            }
        ),
        filename="waiter.json",
    )
)


def deliveries(records: list[Produced]) -> list[tuple[int, dict[str, Any]]]:
    found = []
    for r in records:
        if r.topic == TOPICS.inbox:
            kind, body = serde.decode_inbox(r.value)
            if kind == "EventDelivered":
                found.append((r.partition if r.partition is not None else -1, body))
    return found


def test_a_waited_for_event_goes_to_each_slice_and_may_still_start_runs() -> None:
    starter = workflow("starter", event="doc.signed")
    h = harness([tenant("acme", slices=3)], {"acme": [WAITER, starter]}, internal_partitions=8)
    produced = h.trigger("acme", b'{"event_type": "doc.signed", "data": {"id": 7}}', key=b"sig-7")
    sent = deliveries(produced)
    assert sorted(p for p, _ in sent) == sorted(tenant_partitions("acme", 8, 3))
    body = sent[0][1]
    assert body["tenant"] == "acme" and body["event_type"] == "doc.signed" and body["key"] == "sig-7"
    assert json.loads(body["data_json"]) == {"id": 7}
    assert body["source"] == f"{TOPICS.tenant_triggers('acme')}/0/{h.offset}"
    assert [r["workflow"] for r in run_requests(produced)] == ["starter"]  # an ordinary trigger too


def test_an_event_no_step_waits_for_is_not_forwarded() -> None:
    h = harness([tenant("acme")], {"acme": [WAITER]})
    assert deliveries(h.trigger("acme", b'{"event_type": "doc.rejected", "data": {}}')) == []
    assert deliveries(h.trigger("other", b'{"event_type": "doc.signed", "data": {}}')) == []  # unknown tenant
