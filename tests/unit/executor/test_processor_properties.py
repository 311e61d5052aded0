"""Property: whatever StepCommands arrive and whatever their actions return or raise, the executor
processor never raises, everything it writes decodes and fits, and every command is accounted
for — exactly one StepResult (whose output, if any, is strict JSON) or a dead letter."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.contracts import serde, strict_json
from services.executor import ActionContext, ActionError
from tests.unit.executor.helpers import command
from tests.unit.executor.processor_fakes import Harness, dead_letters, harness, results

MAX_RECORD = 300_000


def nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# st.text() never yields lone surrogates: mix them in on purpose.
surrogates = st.integers(min_value=0xD800, max_value=0xDFFF).map(chr)
any_text = st.lists(st.characters() | surrogates, max_size=30).map("".join)
weird_numbers = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 2**70, -0.0])
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | weird_numbers | any_text | st.binary(max_size=5)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(any_text, children, max_size=5)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=30,
)
outputs = (
    st.dictionaries(any_text, values, max_size=5)
    | values
    | st.integers(min_value=1, max_value=400).map(lambda n: {"big": "x" * (n * 1000)})
    | st.sampled_from([127, 128, 2000]).map(lambda depth: {"deep": nest(depth)})
)
exceptions = (
    st.builds(ActionError, any_text | st.sampled_from(["upstream_down", "http_503"]), any_text, st.booleans())
    | st.builds(RuntimeError, any_text)
    | st.sampled_from([SystemExit, KeyboardInterrupt, MemoryError, RecursionError]).map(lambda cls: cls())
)
behaviours = outputs.map(lambda v: ("return", v)) | exceptions.map(lambda e: ("raise", e))
inputs_json = (
    st.none()
    | values.map(lambda v: json.dumps(v, default=repr))  # NaN, \ud800 escapes, 2**70
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
)


@st.composite
def commands(draw: st.DrawFn, index: int) -> tuple[bytes | None, tuple[str, Any] | None]:
    kind = draw(st.sampled_from(["command", "command", "command", "bytes", "forged"]))
    if kind == "bytes":
        return draw(st.none() | st.binary(max_size=60)), None
    overrides: dict[str, Any] = {"step_id": f"s{index}", "inputs_json": draw(inputs_json) or "{}"}
    if kind == "forged":
        field = draw(st.sampled_from(["run_id", "tenant", "correlation_id", "reply_partition", "deadline"]))
        overrides[field] = draw(
            {
                "run_id": st.sampled_from(["r" * 200_000, ""]),
                "tenant": st.sampled_from(["t" * 100_000, "Not A Tenant", "ghost"]),
                "correlation_id": st.sampled_from(["c" * 9000, ""]),
                "reply_partition": st.sampled_from([-1, 99, 2**31 - 1]),
                "deadline": st.sampled_from([0, -(2**63), 2**63 - 1]),
            }[field]
        )
    return serde.encode("StepCommand", command("scripted", **overrides)), draw(behaviours)


def behave(plan: tuple[str, Any]) -> Any:
    what, value = plan

    def run(_ctx: ActionContext) -> Any:
        if what == "raise":
            raise value
        return value

    return run


@contextmanager
def shared() -> Iterator[Harness]:
    with harness(max_record_bytes=MAX_RECORD) as h:
        yield h


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(st.data())
def test_the_processor_never_raises_and_accounts_for_every_command(data: st.DataObject) -> None:
    count = data.draw(st.integers(min_value=1, max_value=5))
    drawn = [data.draw(commands(i)) for i in range(count)]
    with shared() as h:
        messages = []
        for i, (value, plan) in enumerate(drawn):
            if plan is not None:
                h.action.behaviours[f"s{i}"] = behave(plan)
            messages.append(h.message(value, key=f"k{i}".encode()))
        produced = h.run(*messages)  # must not raise

    for record in produced:
        assert len(record.value or b"") + len(record.key or b"") <= MAX_RECORD
    by_step: dict[str, list[dict[str, Any]]] = {}
    for result in results(produced):
        by_step.setdefault(result["step_id"], []).append(result)
        if result["output_json"] is not None:
            strict_json.loads(result["output_json"], max_depth=200)  # strict: no NaN, no surrogates
        assert result["status"] in ("succeeded", "failed")
        if result["error_message"] is not None:
            result["error_message"].encode("utf-8")
    dead = {int(d["original_offset"]) for d in dead_letters(produced)}
    assert len(dead) == len(dead_letters(produced))
    for i, msg in enumerate(messages):
        accounted = (msg.offset() in dead) + len(by_step.get(f"s{i}", []))
        assert accounted == 1, f"command {i} ({drawn[i][1]!r:.80}) accounted {accounted} times"
