"""CEL compilation checks, evaluation and the input template syntax."""

from __future__ import annotations

import pytest

from services.secrets.references import resolve
from services.workflow import EvalContext, ExpressionError
from services.workflow.expressions import (
    MAX_EXPRESSION_LENGTH,
    MAX_RENDERED_BYTES,
    compile_expression,
    tokenize,
)
from services.workflow.templates import compile_inputs, split_template

CTX = EvalContext(
    trigger={
        "event": "client.created",
        "tenant": "acme",
        "key": "k1",
        "data": {"name": "Ada", "amount": 1200},
    },
    step_outputs={"fetch": {"id": 7, "tags": ["a", "b"]}},
)


@pytest.mark.parametrize(
    ("source", "refs"),
    [
        ("steps.fetch.output.id > 3", {"fetch"}),
        ('steps["fetch"].output', {"fetch"}),
        ("has(steps.a) && steps.b.output.ok", {"a", "b"}),
        ("'steps.fake' + trigger.event", set()),
        ("trigger.data.items.exists(s, s.ok)", set()),
        ("trigger.data.steps", set()),
    ],
)
def test_step_references_are_found_statically(source: str, refs: set[str]) -> None:
    assert compile_expression(source).step_refs == refs


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 +", "does not compile: at 1:4"),
        ("x + 1", "unknown variable 'x'"),
        ("system('ls')", "unknown function 'system'"),
        ("steps", "literal step id"),
        ("steps[trigger.data.k]", "literal step id"),
        ("", "expression is empty"),
        ("${{ trigger.data }}", "bare CEL"),
        ("a" * (MAX_EXPRESSION_LENGTH + 1), "the limit is"),
        ("[1].map(a, [2].map(b, [3].map(c, c)))", "nest 3 deep"),
    ],
)
def test_compile_errors_say_what_is_wrong(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace("[", r"\[")):
        compile_expression(source)


def test_two_level_comprehension_is_allowed() -> None:
    expr = compile_expression("[1, 2].map(a, [3].map(b, a * b))")
    assert expr.evaluate({}) == [[3], [6]]


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ("trigger.data.amount * 2", 2400),
        ("trigger.data.name.upperAscii()", "ADA"),
        ("steps.fetch.output.tags.contains('b')", True),
        ("has(steps.missing)", False),
        ('timestamp("2024-01-02T03:04:05Z")', "2024-01-02T03:04:05Z"),
        ('duration("90s")', 90.0),
        ("{'n': trigger.data.name}", {"n": "Ada"}),
        ("null", None),
    ],
)
def test_evaluation_returns_json_values(source: str, value: object) -> None:
    assert compile_expression(source).evaluate(CTX.variables()) == value


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("trigger.data.nope", "no such key"),
        ("trigger.data.name + 1", "evaluation failed"),
        ("1 / 0", "division by zero"),
    ],
)
def test_evaluation_errors_become_expression_errors(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message) as info:
        compile_expression(source).evaluate(CTX.variables())
    assert source in str(info.value)


def test_condition_must_be_boolean() -> None:
    with pytest.raises(ExpressionError, match="must evaluate to a bool, got int"):
        compile_expression("trigger.data.amount").evaluate_bool(CTX.variables())


def test_tokenizer_skips_string_contents_and_comments() -> None:
    kinds = [(t.kind, t.text) for t in tokenize("a.b // steps.x\n + 'steps.y' + r\"z\"")]
    assert ("ident", "steps") not in kinds
    assert [k for k, _ in kinds].count("string") == 2


# --- templates -----------------------------------------------------------------------------------


def test_template_splitting_and_escape() -> None:
    assert split_template("plain") == ["plain"]
    assert split_template("${{ x }}") == [(" x ",)]
    assert split_template("a ${{ x }} b") == ["a ", (" x ",), " b"]
    assert split_template("$${{ literal }}") == ["${{ literal }}"]
    assert split_template("${{ {'a': {'b': 1}} }}") == [(" {'a': {'b': 1}} ",)]
    assert split_template("${{ '}}' }}") == [(" '}}' ",)]


def test_whole_value_keeps_native_type_and_embedded_interpolates() -> None:
    inputs, problems = compile_inputs(
        {
            "amount": "${{ trigger.data.amount }}",
            "text": "Hello ${{ trigger.data.name }}, "
            "#${{ steps.fetch.output.id }} ${{ steps.fetch.output.tags }}",
            "nested": {"list": ["${{ trigger.data.amount > 1000 }}", 3, None], "raw": "$${{ keep }}"},
            "nothing": "${{ null }} and ${{ null }}",
        }
    )
    assert not problems
    assert inputs.step_refs == {"fetch"}
    rendered = inputs.render(CTX.variables())
    assert rendered["nested"]["raw"] == "$${{ keep }}"  # wire form: a literal ${{ is encoded
    assert resolve(rendered, {}) == {
        "amount": 1200,
        "text": 'Hello Ada, #7 ["a","b"]',
        "nested": {"list": [True, 3, None], "raw": "${{ keep }}"},
        "nothing": "null and null",
    }


def test_template_problems_carry_their_path() -> None:
    _, problems = compile_inputs({"a": {"b": ["ok", "${{ 1 + }}"]}, "c": "${{ unclosed"})
    assert [p.path for p in problems] == [("a", "b", 1), ("c",)]


def test_rendered_inputs_are_size_bounded() -> None:
    inputs, _ = compile_inputs({"big": "${{ trigger.data.blob }}"})
    blob = "x" * (MAX_RENDERED_BYTES + 1)
    with pytest.raises(ExpressionError, match="the limit is"):
        inputs.render(EvalContext({"data": {"blob": blob}}).variables())
