"""Builders shared by the executor unit tests."""

from __future__ import annotations

import json
import time
from typing import Any, Unpack

from services.contracts.records import StepCommand, StepResult
from tests.fixtures.records import StepCommandFields


def command(action: str, inputs: Any = None, /, **overrides: Unpack[StepCommandFields]) -> StepCommand:
    """A StepCommand record with a deadline 30 s ahead."""
    now_ms = int(time.time() * 1000)
    record: StepCommand = {
        "run_id": "run-1",
        "tenant": "acme",
        "workflow": "wf",
        "version": 1,
        "step_id": "s1",
        "attempt": 1,
        "action": action,
        "inputs_json": json.dumps({} if inputs is None else inputs),
        "idempotency_key": "run-1:s1:1",
        "deadline": now_ms + 30_000,
        "scopes": [],
        "correlation_id": "corr-1",
        "issued_at": now_ms,
        "reply_partition": 0,
    }
    record.update(overrides)
    return record


def output_of(result: StepResult) -> Any:
    """The attempt's output, parsed (an attempt without one fails the test)."""
    text = result["output_json"]
    assert text is not None, result
    return json.loads(text)


def message_of(result: StepResult) -> str:
    """The attempt's error message (an attempt without one fails the test)."""
    text = result["error_message"]
    assert text is not None, result
    return text
