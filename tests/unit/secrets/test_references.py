"""Secret references: the wire form the router writes and the executor decodes (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.secrets.references import encode, encode_part, names_in, reference, resolve, resolve_text
from services.workflow.expressions import MAX_RENDERED_BYTES, ExpressionError
from services.workflow.loader import load_definition_text
from services.workflow.problems import DefinitionError
from services.workflow.templates import compile_inputs

VALUES = {"API_TOKEN": "tok-123456", "B": "bee-value"}

# Text rich in the characters the wire form cares about.
tricky = st.text(alphabet=st.sampled_from(list("${} secrets.API_TOKENab\\")), max_size=40) | st.text(
    max_size=20
)


def test_a_reference_in_text_is_carried_as_a_reference_and_resolved_by_the_executor() -> None:
    inputs, problems = compile_inputs(
        {
            "headers": {"Authorization": "Bearer ${{ secrets.API_TOKEN }}"},
            "whole": "${{secrets.B}}",
            "mixed": "$5 for ${{ trigger.data.who }} with ${{ secrets.B }}",
        }
    )
    assert not problems
    assert inputs.secret_refs == {"API_TOKEN", "B"}
    wire = inputs.render({"trigger": {"data": {"who": "${{ secrets.API_TOKEN }}"}}, "steps": {}})
    assert wire["headers"]["Authorization"] == "Bearer ${{ secrets.API_TOKEN }}"
    assert wire["whole"] == "${{ secrets.B }}"
    # trigger data holding a reference's text stays text: its "$" is doubled, never resolved
    assert wire["mixed"] == "$$5 for $${{ secrets.API_TOKEN }} with ${{ secrets.B }}"
    assert "tok-123456" not in str(wire)
    assert names_in(wire) == {"API_TOKEN", "B"}
    assert resolve(wire, VALUES) == {
        "headers": {"Authorization": "Bearer tok-123456"},
        "whole": "bee-value",
        "mixed": "$5 for ${{ secrets.API_TOKEN }} with bee-value",
    }


def test_data_that_looks_like_a_reference_is_never_resolved() -> None:
    inputs, _ = compile_inputs({"a": "${{ trigger.data }}", "b": "x ${{ trigger.data.s }}"})
    data = {"s": "${{ secrets.API_TOKEN }}", "l": ["$${{ secrets.B }}", {"k": "${{ secrets.B }}"}]}
    wire = inputs.render({"trigger": {"data": data}, "steps": {}})
    assert names_in(wire) == frozenset()
    assert resolve(wire, {}) == {"a": data, "b": "x ${{ secrets.API_TOKEN }}"}


def test_strings_without_templates_travel_unchanged() -> None:
    inputs, _ = compile_inputs({"price": "$100", "n": 3, "l": ["a$", None]})
    wire = inputs.render({"trigger": {}, "steps": {}})
    assert wire == {"price": "$100", "n": 3, "l": ["a$", None]}
    assert resolve(wire, {}) == wire


@given(text=tricky)
def test_encoding_round_trips_and_never_holds_a_reference(text: str) -> None:
    wire = encode(text)
    assert names_in(wire) == frozenset()
    assert resolve_text(wire, {}) == text


@given(parts=st.lists(tricky | st.sampled_from([("API_TOKEN",), ("B",)]), max_size=6))
def test_interpolated_strings_decode_to_the_literal_text_and_the_values(parts: list[Any]) -> None:
    if not any(isinstance(p, tuple) for p in parts):
        wire = encode("".join(parts))
    else:
        wire = "".join(reference(p[0]) if isinstance(p, tuple) else encode_part(p) for p in parts)
    expected = "".join(VALUES[p[0]] if isinstance(p, tuple) else p for p in parts)
    assert resolve_text(wire, VALUES) == expected
    assert names_in(wire) == {p[0] for p in parts if isinstance(p, tuple)}


@given(
    doc=st.recursive(
        tricky | st.integers(-(2**63), 2**63 - 1),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(tricky, inner, max_size=3),
        max_leaves=8,
    )
)
def test_any_rendered_data_comes_back_unchanged(doc: Any) -> None:
    inputs, problems = compile_inputs({"v": "${{ trigger.data }}", "t": "${{ secrets.B }}"})
    assert not problems
    wire = inputs.render({"trigger": {"data": doc}, "steps": {}})
    assert names_in(wire) == {"B"}
    assert resolve(wire, VALUES) == {"v": doc, "t": "bee-value"}


def test_secrets_anywhere_but_a_whole_template_are_definition_errors() -> None:
    for bad in (
        "${{ secrets.lower }}",
        "${{ secrets.A + 'x' }}",
        "${{ secrets['A'] }}",
        "${{ secrets.A.B }}",
        "${{ secrets.%s }}" % ("A" * 65),
    ):
        _, problems = compile_inputs({"x": bad})
        assert problems, bad
        assert "referenced only as a whole template" in str(problems[0].error), bad


def test_a_definition_misusing_secrets_is_refused_at_load_naming_the_place() -> None:
    text = """
name: wf
version: 1
trigger: {event: go}
steps:
  - {id: ok, action: echo, inputs: {h: "Bearer ${{ secrets.API_TOKEN }}"}}
  - {id: bad, action: echo, inputs: {h: "${{ secrets.api_token }}"}}
  - {id: cond, action: echo, when: "secrets.A == 'x'"}
"""
    with pytest.raises(DefinitionError) as info:
        load_definition_text(text)
    problems = str(info.value)
    assert "steps[1].inputs.h" in problems and "referenced only as a whole template" in problems
    assert "steps[2].when" in problems and "unknown variable 'secrets'" in problems
    assert "steps[0]" not in problems


def test_the_size_limit_applies_to_the_encoded_inputs() -> None:
    inputs, _ = compile_inputs({"v": "${{ trigger.data }}"})
    dollars = "$" * (MAX_RENDERED_BYTES // 2 + 10) + "${{"  # fits as data, not once "$" is doubled
    with pytest.raises(ExpressionError, match="the limit is"):
        inputs.render({"trigger": {"data": dollars}, "steps": {}})
