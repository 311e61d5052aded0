"""The executor processor is total: whatever one StepCommand or its action does, the loop goes on
with a failed result of a specific kind or a bounded dead letter, and what it writes fits."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from services.contracts import serde
from services.contracts.records import StepCommand, StepResult
from services.executor import ActionContext, ActionError
from services.executor.execute import MAX_OUTPUT_BYTES, MAX_OUTPUT_DEPTH
from services.observability import metrics
from tests.unit.executor.helpers import command
from tests.unit.executor.processor_fakes import dead_letters, harness, only_result, results


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def ok(_ctx: ActionContext) -> dict[str, Any]:
    return {"ok": True}


@pytest.mark.parametrize(
    "inputs_json",
    ['{"note": "\\ud800"}', '{"x": NaN}', '{"x": 1e999}', "[" * 300 + "]" * 300, "not json"],
)
def test_inputs_that_are_not_strict_json_fail_the_attempt_as_invalid_input(inputs_json: str) -> None:
    with harness() as h:
        result = only_result(h.run(h.command("s1", ok, inputs_json=inputs_json)))
    assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "invalid_input", False)


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        ({"note": "\ud800"}, "invalid_output"),  # a lone surrogate (e.g. from a remote server)
        ({"x": math.nan}, "invalid_output"),
        ({"x": math.inf}, "invalid_output"),
        ({"x": {1, 2}}, "invalid_output"),
        ({"x": b"bytes"}, "invalid_output"),
        ([1, 2], "invalid_output"),
        (nested(MAX_OUTPUT_DEPTH + 1), "invalid_output"),
        (nested(5000), "invalid_output"),
        ({"x": "y" * (MAX_OUTPUT_BYTES + 1)}, "output_too_large"),
    ],
)
def test_outputs_that_could_not_be_written_fail_the_attempt(output: Any, kind: str) -> None:
    with harness() as h:
        result = only_result(h.run(h.command("s1", lambda _ctx: output)))
    assert (result["status"], result["error_kind"], result["output_json"]) == ("failed", kind, None)


def test_a_deep_but_allowed_output_and_non_ascii_text_pass_unchanged() -> None:
    output = {"deep": nested(MAX_OUTPUT_DEPTH - 1), "text": "é ✓ 😀"}
    with harness() as h:
        result = only_result(h.run(h.command("s1", lambda _ctx: output)))
    assert result["status"] == "succeeded"
    assert json.loads(result["output_json"]) == output


def raiser(exc: BaseException) -> Any:
    def behaviour(_ctx: ActionContext) -> Any:
        raise exc

    return behaviour


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (RuntimeError("boom \ud800"), "action_error"),
        (ActionError("Not-A-Kind", "x"), "action_error"),
        (ActionError("k" * 300, "x"), "action_error"),
        (ActionError("upstream_down", "message with \udfff and " + "m" * 100_000), "upstream_down"),
        (SystemExit(3), "action_error"),
        (KeyboardInterrupt(), "action_error"),
    ],
)
def test_whatever_an_action_raises_becomes_an_encodable_failed_result(exc: BaseException, kind: str) -> None:
    with harness() as h:
        result = only_result(h.run(h.command("s1", raiser(exc))))
        assert (result["status"], result["error_kind"]) == ("failed", kind)
        assert len(result["error_message"]) <= 4000
        result["error_message"].encode("utf-8")
        # the event loop the actions run on survived: the next attempt runs
        assert only_result(h.run(h.command("s2", ok)))["status"] == "succeeded"


def test_a_result_over_the_record_budget_becomes_a_failed_result_without_output() -> None:
    with harness(max_record_bytes=100_000) as h:
        produced = h.run(h.command("s1", lambda _ctx: {"big": "x" * 200_000}))
    result = only_result(produced)
    assert (result["status"], result["error_kind"], result["retryable"]) == (
        "failed",
        "output_too_large",
        False,
    )
    assert result["output_json"] is None and "bytes" in result["error_message"]


def test_a_crash_of_the_attempt_itself_is_an_executor_error_result() -> None:
    with harness() as h:

        async def broken(command: StepCommand) -> StepResult:
            raise ZeroDivisionError("bug")

        h.processor._run = broken  # type: ignore[method-assign]
        result = only_result(h.run(h.command("s1", ok)))
    assert (result["status"], result["error_kind"]) == ("failed", "executor_error")
    assert "ZeroDivisionError" in result["error_message"]


def test_an_undecodable_command_is_dead_lettered_and_the_batch_goes_on() -> None:
    with harness() as h:
        produced = h.run(h.message(b"\x00\x00\x01"), h.message(None), h.command("s1", ok))
    assert [d["error_kind"] for d in dead_letters(produced)] == ["bad_framing", "bad_framing"]
    assert [r["step_id"] for r in results(produced)] == ["s1"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_id", "r" * 900_000),
        ("tenant", "t" * 300_000),
        ("correlation_id", "c" * 5000),
        ("step_id", "s" * 70),
    ],
)
def test_a_command_whose_identity_could_not_be_echoed_is_dead_lettered(field: str, value: str) -> None:
    with harness() as h:
        forged: dict[str, Any] = {"step_id": "s1", field: value}  # the field is a parameter
        produced = h.run(
            h.message(serde.encode("StepCommand", command("scripted", **forged))), h.command("s2", ok)
        )
    [letter] = dead_letters(produced)
    assert letter["error_kind"] == "invalid_field" and field in letter["error_message"]
    assert all(len(r.value or b"") < 1_000_000 and len(r.key or b"") < 2048 for r in produced)
    assert [r["step_id"] for r in results(produced)] == ["s2"]


def test_an_unknown_tenant_or_action_gets_one_shared_label() -> None:
    def label_values(name: str, label: str) -> set[str]:
        return {
            s.labels[label]
            for f in metrics.REGISTRY.collect()
            if f.name == name
            for s in f.samples
            if label in s.labels
        }

    with harness(grants=lambda tenant: frozenset() if tenant == "acme" else None) as h:
        before_tenants = label_values("switchyard_action_seconds", "tenant")
        before_actions = label_values("switchyard_action_seconds", "action")
        made_up = [h.command(f"s{i}", ok, tenant=f"ghost{i}") for i in range(200)]
        unknown = [
            h.message(serde.encode("StepCommand", command(f"made.up{i}", step_id=f"u{i}"))) for i in range(50)
        ]
        h.run(*made_up, *unknown)
    assert label_values("switchyard_action_seconds", "tenant") - before_tenants <= {
        metrics.UNREGISTERED_TENANT
    }
    assert label_values("switchyard_action_seconds", "action") - before_actions <= {
        "_unregistered",
        "scripted",
    }
