"""The expression cost model: what validation refuses, what evaluation refuses before running, and
that evaluation is total (a result or an ExpressionError, whatever the data)."""

from __future__ import annotations

import math
import time
from typing import Any

import cel
import pytest
from cel.stdlib import distinct as stdlib_distinct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.workflow import EvalContext, ExpressionError
from services.workflow.cel_ast import parse, render
from services.workflow.expression_cost import BUDGET, reads
from services.workflow.expressions import _distinct, compile_expression
from services.workflow.regex_cost import compile_cost
from services.workflow.templates import compile_inputs


def variables(data: Any) -> dict[str, Any]:
    return EvalContext({"event": "e", "tenant": "t", "data": data}).variables()


# --- run-time budget -------------------------------------------------------------------------------


def test_quadratic_map_over_12k_items_is_refused_quickly_with_the_reason() -> None:
    expr = compile_expression("size(trigger.data.items.map(i, i * 2)) > 0")  # fine on modest inputs
    started = time.perf_counter()
    with pytest.raises(ExpressionError) as info:
        expr.evaluate(variables({"items": list(range(12_000))}))
    assert time.perf_counter() - started < 0.5  # refused before running (running takes minutes)
    message = str(info.value)
    assert "exceeds the budget" in message
    assert "trigger.data.items has 12,000 elements and map() is quadratic in this runtime" in message


def test_the_issue_filter_is_refused_quickly_too() -> None:
    # `map(i, i)` is a projection, which runs linearly; 12k values are still over the budget.
    expr = compile_expression("size(trigger.data.items.map(i, i)) > 0")
    started = time.perf_counter()
    with pytest.raises(ExpressionError, match=r"exceeds the budget .*12,001 values"):
        expr.evaluate(variables({"items": list(range(12_000))}))
    assert time.perf_counter() - started < 0.5


def test_the_same_map_over_a_normal_payload_runs() -> None:
    expr = compile_expression("size(trigger.data.items.map(i, i)) > 0")
    assert expr.evaluate(variables({"items": list(range(50))})) is True


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        (
            "trigger.data.status == 'signed' && has(trigger.data.client)",
            {"status": "signed", "client": {}},
            True,
        ),
        (
            "trigger.data.items.exists(i, i.sku == 'X')",
            {"items": [{"sku": str(n)} for n in range(40)]},
            False,
        ),
        (
            "trigger.data.orders.all(o, o.lines.all(l, l.q > 0))",
            {"orders": [{"lines": [{"q": 1}] * 5}] * 20},
            True,
        ),
        ("trigger.data.email.matches('^[a-z.]+@[a-z]+[.]com$')", {"email": "ada@example.com"}, True),
        ("trigger.data.tags.distinct().size()", {"tags": ["a", "b", "a"]}, 2),
    ],
)
def test_normal_expressions_over_normal_payloads_pass(source: str, data: Any, expected: Any) -> None:
    expr = compile_expression(source)
    prepared = expr.prepare(variables(data))
    assert prepared.estimate.cost < BUDGET / 2
    assert expr.run(prepared) == expected


def test_only_what_is_read_is_converted_so_a_large_payload_does_not_slow_a_small_filter() -> None:
    expr = compile_expression("trigger.data.amount > 100")
    data = {"amount": 200, "junk": ["x" * 10] * 20_000, "more": {f"k{i}": i for i in range(5_000)}}
    prepared = expr.prepare(variables(data))
    assert prepared.variables == {"trigger": {"data": {"amount": 200}}}
    assert prepared.estimate.cost < 100_000
    assert expr.run(prepared) is True


def test_a_bare_path_is_read_directly_whatever_its_size() -> None:
    expr = compile_expression("trigger.data")
    data = {"orders": [{"id": i, "lines": [{"sku": f"s{j}"} for j in range(5)]} for i in range(2_000)]}
    started = time.perf_counter()
    assert expr.evaluate(variables(data)) == data
    assert time.perf_counter() - started < 1.0
    with pytest.raises(ExpressionError, match="no such key"):
        compile_expression("trigger.data.nope").evaluate(variables(data))
    with pytest.raises(ExpressionError, match="is not a map"):
        compile_expression("trigger.data.orders.x").evaluate(variables(data))


def test_presence_tests_read_no_value() -> None:
    expr = compile_expression("has(trigger.data.big) && !has(trigger.data.other)")
    prepared = expr.prepare(variables({"big": list(range(50_000))}))
    assert prepared.variables == {"trigger": {"data": {"big": None}}}
    assert expr.run(prepared) is True


def test_nested_comprehension_over_parts_of_each_element_is_charged_once_not_squared() -> None:
    expr = compile_expression("trigger.data.orders.exists(o, o.lines.exists(l, l.q < 0))")
    small = expr.prepare(variables({"orders": [{"lines": [{"q": 1}] * 5}] * 50})).estimate.cost
    large = expr.prepare(variables({"orders": [{"lines": [{"q": 1}] * 5}] * 100})).estimate.cost
    assert large < 2.2 * small  # linear in the payload, not quadratic


def test_a_projecting_map_runs_in_linear_time_with_the_same_result() -> None:
    data = {"items": [{"sku": f"s{n}", "q": n} for n in range(150)]}
    expr = compile_expression("trigger.data.items.map(i, i.sku)")
    assert expr.evaluate(variables(data)) == [f"s{n}" for n in range(150)]
    general = compile_expression("trigger.data.items.map(i, i.sku + '')")  # not a projection
    assert general.prepare(variables(data)).estimate.cost > 2 * expr.prepare(variables(data)).estimate.cost
    assert compile_expression("trigger.data.m.map(k, k)").evaluate(variables({"m": {"a": 1}})) == ["a"]
    with pytest.raises(ExpressionError, match=r"map\(\): KeyError: 'sku'"):
        expr.evaluate(variables({"items": [{"q": 1}]}))
    with pytest.raises(ExpressionError, match="no field 'sku'"):
        expr.evaluate(variables({"items": [1]}))


def test_the_inputs_of_one_step_share_one_budget() -> None:
    source = "${{ trigger.data.items.map(i, i) }}"
    one, _ = compile_inputs({"a": source})
    many, _ = compile_inputs({f"k{n}": source for n in range(20)})
    data = variables({"items": list(range(40))})
    assert one.render(data) == {"a": list(range(40))}
    with pytest.raises(ExpressionError, match="rendering the inputs: expression cost"):
        many.render(data)


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            "trigger.data.items.map(i, [i, i, i, i]).flatten().map(j, [j, j, j, j]).flatten()"
            ".map(k, k).size() > 0",
            "too costly",
        ),
        ("trigger.data.a.all(x, trigger.data.b.map(y, y).size() > 0)", "too costly"),
        ("trigger.data.s.matches(trigger.data.p)", "must be a string literal"),
        ("trigger.data.s.matches('\\\\w{100}')", "costs ~"),
        ("trigger.data.l.all(trigger, trigger > 0)", "hides the variable"),
        ("Foo{a: 1}", "unsupported syntax"),
    ],
)
def test_validation_refuses_costly_shapes(source: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        compile_expression(source)


def test_regex_cost_estimate_orders_patterns_like_the_runtime() -> None:
    assert compile_cost("^[a-z]+$") < compile_cost(r"^\d+$") < compile_cost(r"^\w+$")
    assert compile_cost(r"\w{100}") > 50 * compile_cost(r"\w")
    assert compile_cost(r"(?-u:\w){20}") < compile_cost(r"\w")
    assert compile_cost(r"(?i)\w") > compile_cost(r"\w")


# --- semantics kept ------------------------------------------------------------------------------


def test_reads_lists_value_and_presence_paths() -> None:
    tree = parse("has(trigger.data.x) && trigger.data.items.exists(i, i.y == steps.a.output.z)")
    found = reads(tree)
    assert found.presence == {("trigger", "data", "x")}
    assert found.values == {("trigger", "data", "items"), ("steps", "a", "output", "z")}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(-1e6, 1e6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from("abxy"), inner, max_size=3),
    max_leaves=12,
)


@given(st.lists(json_values, max_size=30))
def test_linear_distinct_equals_the_stdlib_one(items: list[Any]) -> None:
    assert _distinct(items) == stdlib_distinct(items)


# --- totality and speed: random expressions over random data ------------------------------------

ATOMS = [
    "trigger.data",
    "trigger.data.items",
    "trigger.data.m",
    "trigger.data.s",
    "trigger.data.n",
    "trigger.data.x.y",
    "trigger['data']['items']",
    "1",
    "2.5",
    "'a,b'",
    "[1, 2]",
    "{'a': 1}",
    "true",
    "null",
    "v",
    "w",
]


def _expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        binary = st.tuples(inner, st.sampled_from(["+", "-", "==", "<", "in", "&&", "*"]), inner).map(
            lambda t: f"({t[0]} {t[1]} {t[2]})"
        )
        unary = st.tuples(st.sampled_from(["!", "-", "size", "string", "int"]), inner).map(
            lambda t: f"{t[0]}({t[1]})"
        )
        method = st.tuples(
            inner,
            st.sampled_from(
                [
                    "contains('a')",
                    "startsWith('a')",
                    "matches('^a+$')",
                    "split(',')",
                    "join(',')",
                    "distinct()",
                    "sort()",
                    "flatten()",
                    "lowerAscii()",
                    "size()",
                ]
            ),
        ).map(lambda t: f"{t[0]}.{t[1]}")
        macro = st.tuples(
            inner, st.sampled_from(["map", "filter", "exists", "all"]), st.sampled_from("vw"), inner
        ).map(lambda t: f"{t[0]}.{t[1]}({t[2]}, {t[3]})")
        other = st.tuples(inner, inner, inner).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})")
        index = st.tuples(inner, inner).map(lambda t: f"{t[0]}[{t[1]}]")
        return binary | unary | method | macro | other | index | inner.map(lambda s: f"{s}.y")

    return st.recursive(st.sampled_from(ATOMS), extend, max_leaves=8)


def _canon(value: Any) -> Any:
    """``value`` with list order ignored (the runtime iterates maps in no fixed order)."""
    if isinstance(value, list):
        return tuple(sorted((_canon(v) for v in value), key=repr))
    if isinstance(value, dict):
        return tuple(sorted(((k, _canon(v)) for k, v in value.items()), key=repr))
    return value


hostile_text = st.sampled_from(["", "a", "a,b,c", "\ud800", "x" * 5_000, "é" * 100])
hostile_number = st.sampled_from([0, 1, -1, 2**63 - 1, 2**64, 10**30, 1.5, math.nan, math.inf])
payloads = st.fixed_dictionaries(
    {
        "items": st.sampled_from([0, 3, 200, 5_000, 30_000]).map(lambda n: list(range(n)))
        | st.lists(json_values),
        "m": st.dictionaries(st.text(max_size=3), json_values, max_size=5),
        "s": hostile_text,
        "n": hostile_number,
        "x": st.sampled_from([{"y": 1}, {"y": "\ud800"}, [], {"y": [[[]]]}]),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_expressions(), payloads)
def test_any_expression_over_any_data_evaluates_or_raises_expression_error_and_is_fast(
    source: str, data: dict[str, Any]
) -> None:
    try:
        expr = compile_expression(source)
    except ExpressionError:
        return
    started = time.perf_counter()
    try:
        result = expr.evaluate(variables(data))
    except ExpressionError:
        pass
    else:
        # The same answer as the runtime on the source as written (select not rewritten).
        try:
            expected = cel.evaluate(source, {"trigger": {"event": "e", "tenant": "t", "data": data}})
        except Exception:
            pass
        else:
            if isinstance(expected, float | int | str | bool | list | dict | type(None)) and result == result:
                assert _canon(result) == _canon(expected) or (
                    isinstance(expected, float) and math.isnan(expected)
                )
    assert time.perf_counter() - started < 1.0  # a sanity bound; the benchmark has the real figures


@given(json_values)
def test_deep_or_odd_data_is_an_expression_error_not_a_crash(value: Any) -> None:
    deep: Any = value
    for _ in range(300):
        deep = [deep]
    for data in ({"v": deep}, {"v": {1, 2}}, {"v": object()}, {"v": b"\xff"}, {"v": 2**80}):
        for source in ("trigger.data.v", "size(trigger.data.v) > 0"):
            with pytest.raises(ExpressionError):
                compile_expression(source).evaluate(variables(data))


@pytest.mark.parametrize(
    "source",
    [
        "trigger.data.x > 1",
        "trigger.data.x.y == true",
        "has(trigger.data.x) && trigger.data.x.y",
        "a.map(x, x > 1, x * 2)",
        "-9223372036854775808 + 1",
        "!!true",
        "1 + 2 * 3 - -4 / 2 % 3",
        "{'a': [1, 2u, 3.5e-2, b'x', r'\\d']}['a'][0]",
        "x ? y : z ? 1 : 2",
        "'''tri'''.size() + '\\u00e9\\x41\\101'.size()",
    ],
)
def test_rendering_keeps_the_meaning(source: str) -> None:
    rendered = render(parse(source))
    assert render(parse(rendered)) == rendered  # rendering is stable
    data = {"trigger": {"data": {"x": {"y": True}}}, "a": [1, 2, 3], "x": False, "y": 1, "z": True}
    for src in (source, rendered):
        cel.compile(src)

    def outcome(src: str) -> object:
        try:
            return ("value", cel.evaluate(src, data))
        except Exception as exc:
            return ("error", type(exc).__name__)

    assert outcome(rendered) == outcome(source)
