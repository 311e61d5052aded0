"""The waiting-runs benchmark drives real parked runs (keeps ``benchmarks/waiting_runs.py`` from rotting)."""

from __future__ import annotations

import pytest

from benchmarks.waiting_runs import KINDS, heap_per_run, waiting_workflow


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_parks_its_runs_at_the_first_step(kind: str) -> None:
    workflow = waiting_workflow(kind)
    assert workflow.step("first").kind == kind
    figures = heap_per_run(workflow, 50)  # raises unless every run holds a live timer
    assert figures["heap_bytes"] > 0
    assert 200 < figures["record_bytes"] < 2000
