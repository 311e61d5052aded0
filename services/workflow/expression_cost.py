"""The cost model of expressions: what one evaluation may cost, checked before it runs.

Filters run on the router's intake thread, shared by every tenant, and the CEL runtime (Rust)
cannot be interrupted from Python, so an evaluation must be known to be cheap *before* it starts.
Measured on this machine (``python -m benchmarks.expression_cost``) the runtime is super-linear in
several places: ``map``/``filter`` copy their accumulator on every element (quadratic: 12k
elements take seconds), nested comprehensions multiply, ``matches`` compiles its pattern on every
call (a lone Unicode ``\\w`` is ~0.2 ms), and the list helpers run in Python and convert every
element in and out.

Model. Costs are in *units* of about one nanosecond of this machine. An expression's cost is
bounded by interpreting its syntax tree over *shapes* instead of values: a shape bounds a value's
top-level ``length``, its ``nodes`` (values at every depth) and its ``chars`` (string bytes at every
depth). The shapes of what the expression reads (``trigger.data.items``, ``steps.x.output``) are
measured when it runs (:func:`prepare`); each operation adds its cost from its operands' shapes
(coefficients below), a comprehension multiplies its body by the length of what it iterates, and
``map``/``filter`` add the quadratic copy. A comprehension's body is interpreted twice, with an
empty and with a whole-collection element, which bounds the sum over elements (each element is a
disjoint part of the collection) without assuming every element is as large as the collection.

Enforcement:

* at validation (:func:`static_problems`): ``matches`` patterns must be literals whose compilation
  is cheap (:mod:`services.workflow.regex_cost`); comprehension variables cannot hide ``trigger`` or
  ``steps``; and the expression must fit :data:`BUDGET` on a reference input of
  :data:`REFERENCE_SHAPE` for every value it reads (this is what bounds chains such as
  ``map(...).flatten().map(...)``, whose cost multiplies at every stage);
* at run time (:func:`prepare`): only the parts of the variables the expression reads are passed to
  the runtime (the rest of a 256 KiB trigger is never converted), those parts are measured from
  their JSON encoding, and an evaluation whose bound exceeds :data:`BUDGET` is refused with a
  message naming the input and operation that dominate it.

Two shapes never reach the costly parts of the runtime: a bare path (``trigger.data``) is read
directly, and a ``map`` that only projects (``items.map(i, i.sku)``) runs as one linear helper call
(:func:`services.workflow.cel_ast.projection`).

The coefficients are upper estimates on a loaded machine: ``python -m benchmarks.expression_cost``
prints, for each kind of expression, measured nanoseconds per unit (below 1 where the model is
sound) and the measured time of the worst inputs the budget admits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from services.workflow import cel_ast as ast
from services.workflow.regex_cost import compile_cost

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

#: What one evaluation (a filter, a condition, or all the templates of one step's inputs) may cost,
#: in units of ~1 ns of this (shared, loaded) machine; the benchmark measures the wall time of the
#: worst evaluations it admits.
BUDGET = 25_000_000.0
#: A ``matches`` pattern may cost at most this to compile (it is compiled on every call).
MAX_PATTERN_COST = 10_000_000.0
#: The variables whose reads are tracked (``event`` only exists for ``wait_for.match``).
ROOTS = ("trigger", "steps", "context", "event")

# Coefficients (units), measured by benchmarks/expression_cost.py on a loaded 2-core machine and
# rounded up. Converting a value into the runtime is the dominant cost: the binding tries about
# eight conversions (bool, int, float, datetime, ...) before it recognises a string or a map.
NODE = 100.0  # evaluating one syntax node
ITERATION = 4_000.0  # one step of a comprehension
ACCUMULATE = 4_000.0  # map/filter: per element copied per step (n*n/2 copies in all)
CONVERT_NODE = 20_000.0  # Python -> CEL conversion of one value (the variables read)
RESULT_NODE = 10_000.0  # CEL -> Python conversion of one value of the result
CONVERT_CHAR = 2.0
COMPARE_NODE = 30.0  # deep equality / membership, per value
SCAN_CHAR = 2.0  # string scans (size, contains, comparisons)
CALL = 10_000.0  # one call of a Python-implemented helper (split, join, sort, ...)
HELPER_IN_NODE = 4_000.0  # per value converted into a helper
HELPER_OUT_NODE = 12_000.0  # per value converted out of a helper
HELPER_CHAR_LOOP = 600.0  # lowerAscii/upperAscii walk their input in Python
MATCH_CHAR = 20.0  # regex matching, per character of text
MEASURE_NODE = 400.0  # measuring what is read: one JSON encoding (C), per value
# A bare path (``trigger.data``) is read without the runtime: its cost is measuring it, so any
# value the engine accepts (a 256 KiB trigger encodes at most ~175k values) fits the budget.
DIRECT_NODE = 120.0
DIRECT_CHAR = 1.0


@dataclass(frozen=True, slots=True)
class Shape:
    """Upper bounds on a value: ``length`` (top-level items), ``nodes`` (values at every depth,
    itself included) and ``chars`` (string and bytes characters at every depth). ``kind`` is the
    CEL type when known (``list``, ``map``, ``string``, ``scalar``) else ``any``."""

    kind: str
    length: float
    nodes: float
    chars: float


EMPTY = Shape("any", 0.0, 0.0, 0.0)
SCALAR = Shape("scalar", 0.0, 1.0, 0.0)
#: The input assumed when a definition is validated, shared by the values an expression reads: a
#: list of 50 items, 100 values, 2.5 KB (a modest payload; an expression that cannot afford it is
#: refused, since it could only ever run on toy inputs).
REFERENCE_SHAPE = Shape("list", 50.0, 100.0, 2_500.0)


def _element(of: Shape) -> Shape:
    """A bound on one element (or key) of a collection of shape ``of``."""
    return Shape("any", of.nodes, of.nodes, of.chars)


def _literal_shape(node: ast.Lit) -> Shape:
    if node.kind in ("string", "bytes"):
        return Shape("string", float(len(node.value)), 1.0, float(len(node.value)))
    return SCALAR


# --- what an expression reads -------------------------------------------------------------------

Path = tuple[str, ...]


def static_path(node: ast.Expr, bound: frozenset[str]) -> Path | None:
    """``("trigger", "data", "x")`` for ``trigger.data.x`` / ``trigger["data"]["x"]``, else None."""
    if isinstance(node, ast.Ident):
        return (node.name,) if node.name in ROOTS and node.name not in bound else None
    if isinstance(node, ast.Select) and not node.test:
        inner = static_path(node.operand, bound)
        return None if inner is None else (*inner, node.field)
    if isinstance(node, ast.Index) and isinstance(node.index, ast.Lit) and node.index.kind == "string":
        inner = static_path(node.operand, bound)
        return None if inner is None else (*inner, node.index.value)
    return None


@dataclass(frozen=True, slots=True)
class Reads:
    """The paths an expression reads: ``values`` whole, ``presence`` only tested with ``has()``."""

    values: frozenset[Path]
    presence: frozenset[Path]


def reads(tree: ast.Expr) -> Reads:
    """What ``tree`` reads from ``trigger`` and ``steps``."""
    values: set[Path] = set()
    presence: set[Path] = set()

    def visit(node: ast.Expr, bound: frozenset[str]) -> None:
        path = static_path(node, bound)
        if path is not None:
            values.add(path)
            return
        if isinstance(node, ast.Select) and node.test:
            base = static_path(node.operand, bound)
            if base is not None:
                presence.add((*base, node.field))
                return
        if isinstance(node, ast.Comp):
            visit(node.target, bound)
            for arg in node.args:
                visit(arg, bound | {node.var})
            return
        for child in ast.children(node):
            visit(child, bound)

    visit(tree, frozenset())
    return Reads(frozenset(values), frozenset(presence))


# --- the interpreter over shapes ----------------------------------------------------------------


@dataclass(slots=True)
class _Run:
    source: str
    paths: Mapping[Path, Shape]
    multiplier: float = 1.0
    top: tuple[float, str] = (0.0, "")
    env: dict[str, Shape] = field(default_factory=dict)

    def note(self, cost: float, why: str) -> None:
        weighted = cost * self.multiplier
        if weighted > self.top[0]:
            self.top = (weighted, why)

    def text(self, node: ast.Expr) -> str:
        snippet = self.source[node.start : node.end]
        return snippet if len(snippet) <= 60 else snippet[:57] + "..."


def _fmt(n: float) -> str:
    return f"{int(n):,}"


_CONVERSIONS = frozenset({"int", "uint", "double", "string", "bytes", "dyn", "type", "duration", "timestamp"})
_SCANS = frozenset({"contains", "startsWith", "endsWith", "size"})


def _helper(run: _Run, node: ast.Call, args: list[Shape]) -> tuple[Shape, float]:
    """Cost of a Python-implemented helper: conversions in and out plus its own algorithm."""
    name = node.name
    first = args[0] if args else EMPTY
    total_nodes = sum(a.nodes for a in args)
    total_chars = sum(a.chars for a in args)
    algorithm = 0.0
    if name in ("split",):
        pieces = first.chars + 1
        out = Shape("list", pieces, pieces + 1, first.chars)
    elif name == "join":
        sep = args[1].chars if len(args) > 1 else 0.0
        out = Shape("string", first.chars + first.length * sep, 1.0, first.chars + first.length * sep)
    elif name in ("lowerAscii", "upperAscii", "trim", "substring"):
        out = Shape("string", first.chars, 1.0, first.chars)
        algorithm = HELPER_CHAR_LOOP * first.chars if name in ("lowerAscii", "upperAscii") else 0.0
    elif name in ("distinct", "slice"):
        out = Shape("list", first.length, first.nodes, first.chars)
    elif name == "flatten":
        out = Shape("list", first.nodes, first.nodes, first.chars)
    elif name == "sort":
        out = Shape("list", first.length, first.nodes, first.chars)
        algorithm = COMPARE_NODE * first.length * math.log2(first.length + 2)
    else:  # min, max, sum, bool, charAt, indexOf, lastIndexOf, contains (lists)
        out = SCALAR if name != "charAt" else Shape("string", 1.0, 1.0, 4.0)
    conversion = HELPER_IN_NODE * total_nodes + CONVERT_CHAR * total_chars
    conversion += HELPER_OUT_NODE * out.nodes + CONVERT_CHAR * out.chars
    cost = CALL + conversion + algorithm
    run.note(cost, f"{name}() converts {_fmt(total_nodes + out.nodes)} values in and out of Python")
    return out, cost


def _call(run: _Run, node: ast.Call, helpers: frozenset[str]) -> tuple[Shape, float]:
    cost = NODE
    args: list[Shape] = []
    for arg in ((node.target,) if node.target is not None else ()) + node.args:
        shape, c = _interpret(run, arg, helpers)
        args.append(shape)
        cost += c
    first = args[0] if args else EMPTY
    if node.name == "matches":
        pattern = node.args[-1]
        compile_units = compile_cost(pattern.value) if isinstance(pattern, ast.Lit) else MAX_PATTERN_COST
        text = first.chars + 1
        own = compile_units + MATCH_CHAR * text * (1 + compile_units / 1e6)
        run.note(own, f"matches() compiles its pattern (~{compile_units / 1e3:,.0f} us) on every call")
        return SCALAR, cost + own
    if (
        node.name in helpers
        and node.name != "size"
        and not (node.name == "contains" and first.kind == "string")
    ):
        out, own = _helper(run, node, args)
        return out, cost + own
    if node.name in _SCANS:
        own = SCAN_CHAR * sum(a.chars for a in args) + COMPARE_NODE * first.length
        return SCALAR, cost + own
    if node.name in _CONVERSIONS:
        own = CONVERT_NODE * first.nodes + SCAN_CHAR * first.chars
        out = first if node.name in ("dyn", "string", "bytes") else SCALAR
        return Shape(out.kind, out.length, out.nodes, out.chars), cost + own
    return SCALAR, cost  # timestamp accessors (getHours, ...), bool conversion


def _comprehension(run: _Run, node: ast.Comp, helpers: frozenset[str]) -> tuple[Shape, float]:
    target, cost = _interpret(run, node.target, helpers)
    count = target.length if target.kind in ("list", "map") else target.nodes
    if ast.projection(node) is not None:  # runs as one linear helper call, see cel_ast.projection
        out = Shape("list", count, target.nodes + 1, target.chars)
        own = CALL + HELPER_IN_NODE * target.nodes + HELPER_OUT_NODE * out.nodes
        own += CONVERT_CHAR * (target.chars + out.chars)
        run.note(own, f"map() converts {_fmt(target.nodes + out.nodes)} values in and out of Python")
        return out, cost + NODE + own
    saved_env, saved_mult = dict(run.env), run.multiplier
    per_element: list[tuple[Shape, float]] = []
    for element, multiplier in ((EMPTY, count), (_element(target), 1.0)):
        run.env[node.var] = element
        run.multiplier = saved_mult * max(multiplier, 1.0)
        shapes_costs = [_interpret(run, arg, helpers) for arg in node.args]
        per_element.append((shapes_costs[-1][0], sum(c for _, c in shapes_costs)))
    run.env, run.multiplier = saved_env, saved_mult
    (empty_out, empty_cost), (full_out, full_cost) = per_element
    body = count * empty_cost + max(full_cost - empty_cost, 0.0)
    cost += NODE + ITERATION * count + body
    run.note(ITERATION * count + body, f"{run.text(node.target)} has {_fmt(count)} elements to iterate")
    if node.macro in ("map", "filter"):
        copies = ACCUMULATE * count * count / 2
        cost += copies
        run.note(
            copies,
            f"{run.text(node.target)} has {_fmt(count)} elements and {node.macro}() is quadratic "
            "in this runtime",
        )
    if node.macro == "map":
        nodes = count * empty_out.nodes + max(full_out.nodes - empty_out.nodes, 0.0)
        chars = count * empty_out.chars + max(full_out.chars - empty_out.chars, 0.0)
        return Shape("list", count, 1 + count + nodes, chars), cost
    if node.macro == "filter":
        return Shape("list", count, target.nodes + 1, target.chars), cost
    return SCALAR, cost


def _interpret(run: _Run, node: ast.Expr, helpers: frozenset[str]) -> tuple[Shape, float]:
    """``(shape of the value, cost of computing it)`` for ``node``."""
    path = static_path(node, frozenset(run.env))
    if path is not None:
        return run.paths.get(path, EMPTY), NODE * len(path)
    if isinstance(node, ast.Lit):
        return _literal_shape(node), NODE
    if isinstance(node, ast.Ident):
        return run.env.get(node.name, EMPTY), NODE
    if isinstance(node, ast.Select):
        operand, cost = _interpret(run, node.operand, helpers)
        if node.test:
            return SCALAR, cost + NODE + CONVERT_CHAR * len(node.field)
        return _element(operand), cost + NODE
    if isinstance(node, ast.Index):
        operand, cost = _interpret(run, node.operand, helpers)
        index, c2 = _interpret(run, node.index, helpers)
        return _element(operand), cost + c2 + NODE + SCAN_CHAR * index.chars
    if isinstance(node, ast.Call):
        return _call(run, node, helpers)
    if isinstance(node, ast.Comp):
        return _comprehension(run, node, helpers)
    if isinstance(node, ast.ListLit | ast.MapLit):
        parts = node.items if isinstance(node, ast.ListLit) else tuple(p for e in node.entries for p in e)
        results = [_interpret(run, p, helpers) for p in parts]
        nodes = 1 + sum(s.nodes for s, _ in results)
        chars = sum(s.chars for s, _ in results)
        kind = "list" if isinstance(node, ast.ListLit) else "map"
        count = len(node.items) if isinstance(node, ast.ListLit) else len(node.entries)
        return Shape(kind, float(count), nodes, chars), NODE * (1 + len(parts)) + sum(c for _, c in results)
    if isinstance(node, ast.Unary):
        _, cost = _interpret(run, node.operand, helpers)
        return SCALAR, cost + NODE
    if isinstance(node, ast.Cond):
        results = [_interpret(run, p, helpers) for p in (node.cond, node.then, node.other)]
        a, b = results[1][0], results[2][0]
        shape = Shape("any", a.length + b.length, a.nodes + b.nodes, a.chars + b.chars)
        return shape, NODE + sum(c for _, c in results)
    assert isinstance(node, ast.Binary)
    (left, c1), (right, c2) = _interpret(run, node.left, helpers), _interpret(run, node.right, helpers)
    cost = NODE + c1 + c2
    if node.op == "+":
        if left.kind == "scalar" and right.kind == "scalar":
            return SCALAR, cost
        own = ACCUMULATE * (left.length + right.length) + CONVERT_CHAR * (left.chars + right.chars)
        run.note(own, f"{run.text(node)} copies {_fmt(left.length + right.length)} elements")
        kind = left.kind if left.kind == right.kind else "any"
        return Shape(
            kind, left.length + right.length, left.nodes + right.nodes, left.chars + right.chars
        ), cost + own
    if node.op in ("==", "!=", "in", "<", "<=", ">", ">="):
        if node.op == "in":
            own = COMPARE_NODE * (right.nodes + left.nodes * right.length) + SCAN_CHAR * (
                left.chars + right.chars
            )
        else:
            own = COMPARE_NODE * (left.nodes + right.nodes) + SCAN_CHAR * (left.chars + right.chars)
        run.note(own, f"{run.text(node)} compares {_fmt(left.nodes + right.nodes)} values")
        return SCALAR, cost + own
    return SCALAR, cost  # && || - * / %


@dataclass(frozen=True, slots=True)
class Estimate:
    """A bound on one evaluation: ``cost`` units, and what dominates it (``reason``)."""

    cost: float
    reason: str

    def refusal(self, budget: float = BUDGET) -> str:
        return f"expression cost {self.cost:.2g} exceeds the budget {budget:.2g}: {self.reason}"


def estimate(
    tree: ast.Expr, source: str, paths: Mapping[Path, Shape], helpers: frozenset[str] = frozenset()
) -> Estimate:
    """The cost bound of ``tree`` when the value paths it reads have the given shapes.

    ``helpers`` are the names that resolve to Python-implemented functions in this evaluation.
    The cost of converting the inputs in and the result out is included.
    """
    run = _Run(source, paths)
    if static_path(tree, frozenset()) is not None:  # read directly, see CompiledExpression
        shape = next(iter(paths.values()), EMPTY)
        cost = DIRECT_NODE * shape.nodes + DIRECT_CHAR * shape.chars
        return Estimate(cost, f"{source} holds {_fmt(shape.nodes)} values and {_fmt(shape.chars)} bytes")
    shape, cost = _interpret(run, tree, helpers)
    inputs = [(p, s) for p, s in paths.items() if not any(p[: len(q)] == q and q != p for q in paths)]
    for p, s in inputs:
        conversion = (CONVERT_NODE + MEASURE_NODE) * s.nodes + CONVERT_CHAR * s.chars
        cost += conversion
        run.note(conversion, f"{'.'.join(p)} holds {_fmt(s.nodes)} values and {_fmt(s.chars)} bytes")
    result = RESULT_NODE * shape.nodes + CONVERT_CHAR * shape.chars
    run.note(result, f"the result has up to {_fmt(shape.nodes)} values to convert")
    return Estimate(cost + result, run.top[1] or "the expression")


# --- validation ---------------------------------------------------------------------------------


def static_problems(tree: ast.Expr, source: str, helpers: frozenset[str]) -> Iterator[str]:
    """What validation refuses in ``tree`` on cost grounds (empty when acceptable)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Comp) and node.var in ROOTS[:2]:  # `event` is free outside a match
            yield f"comprehension variable {node.var!r} hides the variable of the same name; rename it"
        if isinstance(node, ast.Call) and node.name == "matches":
            pattern = node.args[-1] if node.args else None
            if not (isinstance(pattern, ast.Lit) and pattern.kind == "string"):
                yield "the pattern of matches() must be a string literal (it is compiled on every call)"
                continue
            units = compile_cost(pattern.value)
            if units > MAX_PATTERN_COST:
                yield (
                    f"the pattern {pattern.value[:40]!r} of matches() costs ~{units / 1e6:.1f} ms to compile "
                    f"and is compiled on every call; the limit is {MAX_PATTERN_COST / 1e6:.0f} ms. Unicode "
                    r"classes (\w, \d, \pL, .) are the costly part: prefer explicit ranges such as "
                    "[A-Za-z0-9_] or ASCII mode (?-u)"
                )
    values = reads(tree).values
    # The reference input is shared by the paths read (disjoint parts of one payload).
    k = float(max(1, len(values)))
    ref = Shape(
        "list",
        min(REFERENCE_SHAPE.length, REFERENCE_SHAPE.nodes / k),
        REFERENCE_SHAPE.nodes / k,
        REFERENCE_SHAPE.chars / k,
    )
    paths = {p: ref for p in values}
    at_reference = estimate(tree, source, paths, helpers)
    if at_reference.cost > BUDGET:
        yield (
            f"too costly: on a modest input ({_fmt(REFERENCE_SHAPE.length)} items, "
            f"{_fmt(REFERENCE_SHAPE.nodes)} values, {_fmt(REFERENCE_SHAPE.chars)} bytes) the "
            f"{at_reference.refusal()}. Do the heavy work in a step"
        )


# --- run time -----------------------------------------------------------------------------------


class InputError(ValueError):
    """The variables cannot be handed to the runtime (text that is not UTF-8, a 65-bit integer,
    NaN, nesting deeper than 254 levels, a value that is not JSON)."""


def _non_finite(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def measure(value: Any) -> Shape:
    """The shape of a JSON-like ``value``, from its JSON encoding (one fast pass in C).

    Every value takes at least one comma or bracket in JSON, so counting those bounds ``nodes``
    from above; ``chars`` is the encoded length.
    """
    try:
        raw = orjson.dumps(value)
    except (TypeError, ValueError) as exc:  # orjson.JSONEncodeError is a TypeError
        raise InputError(str(exc)) from exc
    if b"null" in raw and _non_finite(value):  # orjson writes NaN and infinities as null
        raise InputError("NaN and infinities are not JSON")
    nodes = float(raw.count(b",") + raw.count(b"[") + raw.count(b"{") + 1)
    if isinstance(value, list | tuple):
        return Shape("list", float(len(value)), nodes, float(len(raw)))
    if isinstance(value, dict):
        return Shape("map", float(len(value)), nodes, float(len(raw)))
    if isinstance(value, str | bytes):
        return Shape("string", float(len(value)), 1.0, float(len(raw)))
    return SCALAR


@dataclass(slots=True)
class _Trie:
    whole: bool = False
    children: dict[str, _Trie] = field(default_factory=dict)


def _trie(r: Reads) -> dict[str, _Trie]:
    roots: dict[str, _Trie] = {}
    for path, whole in [(p, True) for p in r.values] + [(p, False) for p in r.presence]:
        node = roots.setdefault(path[0], _Trie())
        for seg in path[1:]:
            node = node.children.setdefault(seg, _Trie())
        node.whole = node.whole or whole
    return roots


def _prune(value: Any, node: _Trie) -> Any:
    if node.whole or not isinstance(value, dict):
        return value
    return {
        key: _prune(value[key], child) if (child.whole or child.children) else None
        for key, child in node.children.items()
        if key in value
    }


def _shape_at(variables: Mapping[str, Any], path: Path) -> Shape:
    value: Any = variables
    for seg in path:
        if not isinstance(value, Mapping):
            return _element(measure(value))
        if seg not in value:
            return EMPTY  # the evaluation fails with "no such key"
        value = value[seg]
    return measure(value)


def prepare(r: Reads, variables: Mapping[str, Any]) -> tuple[JsonObject, dict[Path, Shape]]:
    """The variables reduced to what ``r`` reads, and the measured shape of each value path.

    Raises :class:`InputError` when a part that is read cannot be handed to the runtime.
    """
    pruned = {name: _prune(variables[name], node) for name, node in _trie(r).items() if name in variables}
    return pruned, {path: _shape_at(variables, path) for path in r.values}
