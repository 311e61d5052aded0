"""The expression language of definitions: CEL (Common Expression Language), never Python ``eval``.

Expressions appear in ``trigger.filter``, ``steps[].when`` and inside input templates. They are
compiled once, when a definition is validated, and evaluated against three variables:

* ``trigger`` — a map describing the event that started the run: ``event`` (type), ``data``
  (payload), ``key`` (idempotency key), ``tenant`` and whatever else the router adds;
* ``steps`` — a map of step id to ``{"output": <the step's output>}``, holding only steps that have
  succeeded (a skipped step has no entry; test with ``has(steps.x)``).
* ``context`` — a map of ``context:`` entry name to what its read returned at run start (the
  definition's firm context; empty when it declares none).

Why evaluation is bounded: CEL is deliberately not Turing-complete. It has no loops, recursion,
user-defined functions or variable bindings; its only iteration is the comprehension macros
(``all``, ``exists``, ``exists_one``, ``map``, ``filter``) over a finite list or map, so every
evaluation terminates. Terminating is not enough (this runtime's ``map`` is quadratic, converting
a string into it costs ~10 us, and it cannot be interrupted), so the cost of every evaluation is
bounded *before* it runs, by :mod:`services.workflow.expression_cost`:

* the source of one expression is at most :data:`MAX_EXPRESSION_LENGTH` characters;
* comprehensions nest at most :data:`MAX_COMPREHENSION_DEPTH` deep;
* only the CEL standard library plus a vetted list of helpers is available (no ``lists.range``
  or ``replace``, which could amplify output); ``matches`` patterns are literals cheap to compile;
* validation refuses an expression that exceeds the budget on a modest input; at run time only
  the parts of the variables it reads are handed to the runtime (:meth:`CompiledExpression.prepare`)
  and an evaluation whose cost bound exceeds :data:`~services.workflow.expression_cost.BUDGET`
  fails with an :class:`ExpressionError` saying what dominates it, without running;
* ``a.b`` runs as ``a["b"]`` (same meaning; the runtime copied the whole selected value) and a
  bare path (``trigger.data``) is read without the runtime;
* every failure, whatever the data (text that is not UTF-8, 65-bit integers, deep nesting), is an
  :class:`ExpressionError`;
* rendered step inputs are at most :data:`MAX_RENDERED_BYTES` of JSON (checked in
  :mod:`services.workflow.templates`).

Static checks done at compile time: syntax, unknown variables, unknown functions, comprehension
depth, and the set of ``steps.<id>`` references (which validation checks against the DAG's
ancestors), likewise of ``context.<name>`` references (checked against the declared entries). A
reference must name a step or entry literally (``steps.fetch``, ``steps["fetch"]``, ``context.client``).
"""

from __future__ import annotations

import base64
import datetime as dt
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cel
from cel import stdlib as cel_stdlib

from services.workflow import cel_ast, expression_cost
from services.workflow.expression_cost import BUDGET, Estimate, InputError, Reads

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

MAX_EXPRESSION_LENGTH = 2048
MAX_COMPREHENSION_DEPTH = 2
#: Upper bound of the JSON encoding of one step's rendered inputs.
MAX_RENDERED_BYTES = 256 * 1024

VARIABLES = ("trigger", "steps", "context")
#: What a ``wait_for.match`` sees: the incoming event, and the run's ``trigger``, ``steps``, ``context``.
MATCH_VARIABLES = ("event", "trigger", "steps", "context")
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})

#: Functions the CEL runtime provides natively (standard definitions).
_NATIVE_FUNCTIONS = frozenset(
    {
        "size", "contains", "startsWith", "endsWith", "matches", "int", "uint", "double", "string",
        "bytes", "timestamp", "duration", "dyn", "type", "has", "getFullYear", "getMonth", "getDate",
        "getDayOfMonth", "getDayOfYear", "getDayOfWeek", "getHours", "getMinutes", "getSeconds",
        "getMilliseconds",
    }
)  # fmt: skip


def _hashable(value: Any) -> Any:
    """A hashable stand-in equal exactly when ``value`` is (Python equality, as the helpers use)."""
    if isinstance(value, list | tuple):
        return ("list", tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return ("map", frozenset((k, _hashable(v)) for k, v in value.items()))
    return value


def _distinct(items: list[Any]) -> list[Any]:
    """``cel.stdlib``'s ``distinct`` (first occurrences, in order) in linear instead of quadratic time."""
    seen: set[Any] = set()
    out: list[Any] = []
    for item in items:
        key = _hashable(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _project(items: Any, path: list[str]) -> list[Any]:
    """``items.map(x, x.a.b)`` in linear time (see :func:`cel_ast.projection`): each element (or,
    for a map, each key) followed along ``path``; a missing key or a non-map fails as in CEL."""
    if not isinstance(items, list | dict):
        raise TypeError(f"map() needs a list or a map, not {type(items).__name__}")
    out: list[Any] = []
    for item in items:
        for key in path:
            if not isinstance(item, dict):
                raise TypeError(f"no field {key!r} on a {type(item).__name__}")
            item = item[key]
        out.append(item)
    return out


#: Extension helpers (from ``cel.stdlib``) we enable: each runs in linear (``sort``: n log n) time;
#: their cost, mostly converting values in and out of Python, is charged by the cost model.
_EXTENSIONS: dict[str, Callable[..., Any]] = {
    name: func
    for library in ("core", "strings", "lists")
    for name, func in cel_stdlib.EXTENSIONS[library].items()
    if name in {"min", "max", "sum", "bool", "charAt", "indexOf", "lastIndexOf", "substring", "split",
                "join", "lowerAscii", "upperAscii", "trim", "contains", "flatten", "slice", "sort"}
} | {"distinct": _distinct}  # fmt: skip

ALLOWED_FUNCTIONS = _NATIVE_FUNCTIONS | frozenset(_EXTENSIONS)
#: Helpers only the rewritten source calls (user expressions cannot name them).
_INTERNAL: dict[str, Callable[..., Any]] = {cel_ast.PROJECT: _project}


class ExpressionError(Exception):
    """An expression failed to compile or evaluate. ``expression`` is its source text."""

    def __init__(self, message: str, expression: str = "") -> None:
        self.message = message
        self.expression = expression
        super().__init__(message)

    def __str__(self) -> str:
        if self.expression:
            return f"{self.message} (in expression {self.expression!r})"
        return self.message


@dataclass(frozen=True, slots=True)
class EvalContext:
    """What expressions see at run time.

    ``trigger`` becomes the CEL variable ``trigger``; ``step_outputs`` maps the id of each
    *succeeded* step to its output and becomes ``steps`` as ``{id: {"output": output}}``.
    """

    trigger: Mapping[str, Any]
    step_outputs: Mapping[str, Any] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    """``context:`` entry name -> what its read returned (the CEL variable ``context``)."""

    def variables(self) -> JsonObject:
        """The CEL variables for this context."""
        return {
            "trigger": dict(self.trigger),
            "steps": {step_id: {"output": out} for step_id, out in self.step_outputs.items()},
            "context": dict(self.context),
        }


# --- lexical analysis ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    """A CEL token: ``kind`` is ``ident``, ``string``, ``number`` or ``punct``."""

    kind: str
    text: str
    value: str = ""


_PUNCT2 = ("&&", "||", "==", "!=", "<=", ">=")


def scan_string_literal(src: str, i: int) -> tuple[int, str]:
    """Scan a CEL string literal starting at ``src[i]`` (after any r/b prefix); return (end, value)."""
    raw = i > 0 and src[i - 1] in "rR"
    quote = src[i : i + 3] if src[i : i + 3] in ('"""', "'''") else src[i]
    j = i + len(quote)
    chars: list[str] = []
    while j < len(src):
        if src.startswith(quote, j):
            return j + len(quote), "".join(chars)
        if src[j] == "\\" and not raw and j + 1 < len(src):
            chars.append(src[j : j + 2])
            j += 2
            continue
        if src[j] == "\n" and len(quote) == 1:
            break
        chars.append(src[j])
        j += 1
    raise ExpressionError("unterminated string literal", src)


def tokenize(src: str) -> Iterator[Token]:
    """Split CEL source into tokens (enough for reference analysis; the parser proper is CEL's)."""
    i = 0
    while i < len(src):
        ch = src[i]
        if ch.isspace():
            i += 1
        elif ch == "/" and src.startswith("//", i):
            nl = src.find("\n", i)
            i = len(src) if nl < 0 else nl + 1
        elif ch in "\"'":
            end, value = scan_string_literal(src, i)
            yield Token("string", src[i:end], value)
            i = end
        elif ch in "rRbB" and i + 1 < len(src) and src[i + 1] in "\"'":
            end, value = scan_string_literal(src, i + 1)
            yield Token("string", src[i:end], value)
            i = end
        elif ch in "rRbB" and i + 2 < len(src) and src[i + 1] in "rRbB" and src[i + 2] in "\"'":
            end, value = scan_string_literal(src, i + 2)
            yield Token("string", src[i:end], value)
            i = end
        elif ch.isalpha() or ch == "_":
            j = i + 1
            while j < len(src) and (src[j].isalnum() or src[j] == "_"):
                j += 1
            yield Token("ident", src[i:j])
            i = j
        elif ch.isdigit():
            j = i + 1
            while j < len(src) and (src[j].isalnum() or src[j] in "._"):
                j += 1
            yield Token("number", src[i:j])
            i = j
        else:
            two = src[i : i + 2]
            if two in _PUNCT2:
                yield Token("punct", two)
                i += 2
            else:
                yield Token("punct", ch)
                i += 1


@dataclass(frozen=True, slots=True)
class _Analysis:
    step_refs: frozenset[str]
    context_refs: frozenset[str]
    bound: frozenset[str]
    depth: int
    problems: tuple[str, ...]


#: Variables whose first key must be literal (validation checks it names a step / a context entry).
_NAMED_ROOTS = {
    "steps": "`steps` must be followed by a literal step id, e.g. `steps.fetch.output` "
    'or `steps["fetch"].output`',
    "context": "`context` must be followed by a literal context entry name, e.g. `context.client` "
    'or `context["client"]`',
}


def _analyse(src: str) -> _Analysis:
    tokens = list(tokenize(src))
    refs: set[str] = set()
    context_refs: set[str] = set()
    bound: set[str] = set()
    problems: list[str] = []
    open_parens = 0
    macro_stack: list[int] = []
    depth = 0
    for n, tok in enumerate(tokens):
        prev = tokens[n - 1] if n > 0 else None
        nxt = tokens[n + 1 : n + 4]
        if tok.kind == "punct" and tok.text == "(":
            open_parens += 1
            if (
                prev
                and prev.kind == "ident"
                and prev.text in _MACROS
                and n >= 2
                and tokens[n - 2].text == "."
            ):
                macro_stack.append(open_parens)
                depth = max(depth, len(macro_stack))
                if nxt and nxt[0].kind == "ident":
                    bound.add(nxt[0].text)
                if len(nxt) >= 3 and nxt[1].text == "," and nxt[2].kind == "ident":
                    bound.add(nxt[2].text)
        elif tok.kind == "punct" and tok.text == ")":
            if macro_stack and macro_stack[-1] == open_parens:
                macro_stack.pop()
            open_parens -= 1
        elif tok.kind == "ident" and tok.text in _NAMED_ROOTS and not (prev and prev.text == "."):
            if len(nxt) >= 2 and nxt[0].text == "." and nxt[1].kind == "ident":
                name: str | None = nxt[1].text
            elif len(nxt) >= 3 and nxt[0].text == "[" and nxt[1].kind == "string" and nxt[2].text == "]":
                name = nxt[1].value
            else:
                name = None
                problems.append(_NAMED_ROOTS[tok.text])
            if name is not None:
                (refs if tok.text == "steps" else context_refs).add(name)
    return _Analysis(frozenset(refs), frozenset(context_refs), frozenset(bound), depth, tuple(problems))


# --- compiled expressions ------------------------------------------------------------------------


def _to_json(value: Any) -> Any:
    """Convert a CEL result into a JSON-compatible Python value."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExpressionError(f"result {value} is not a finite number")
        return value
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    raise ExpressionError(f"result of type {type(value).__name__} cannot be represented in JSON")


_FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One expression ready to run against one set of variables: the part of the variables it
    reads (``variables``) and the bound on what running it costs (``estimate``)."""

    variables: JsonObject
    estimate: Estimate


@dataclass(frozen=True, slots=True, eq=False)
class CompiledExpression:
    """A CEL expression compiled once, evaluated many times. Build with :func:`compile_expression`."""

    source: str
    step_refs: frozenset[str]
    _program: cel.Program
    _tree: cel_ast.Expr
    _reads: Reads
    _functions: dict[str, Callable[..., Any]]
    #: For a bare path (``trigger.data``, ``steps.x.output``): read directly, without the runtime.
    _direct: tuple[str, ...] | None = None
    #: Names of the ``context:`` entries it reads (``context.<name>``).
    context_refs: frozenset[str] = frozenset()

    def prepare(self, variables: Mapping[str, Any]) -> Prepared:
        """Reduce ``variables`` to what this expression reads and bound the cost of evaluating it.

        Raises :class:`ExpressionError` if the part it reads cannot be evaluated (text that is not
        UTF-8, an integer beyond 64 bits, nesting deeper than 254 levels).
        """
        try:
            pruned, shapes = expression_cost.prepare(self._reads, variables)
            estimate = expression_cost.estimate(self._tree, self.source, shapes, frozenset(self._functions))
        except InputError as exc:
            raise ExpressionError(f"cannot evaluate against this data: {exc}", self.source) from exc
        except Exception as exc:  # e.g. RecursionError on pathological data: still an expression failure
            raise ExpressionError(f"cannot evaluate against this data: {exc!r}", self.source) from exc
        return Prepared(pruned, estimate)

    def run(self, prepared: Prepared, budget: float = BUDGET) -> Any:
        """Evaluate what :meth:`prepare` of this expression returned; JSON-compatible result.

        Raises :class:`ExpressionError` when its cost bound exceeds ``budget`` (without running it)
        and on any evaluation failure (missing key, type mismatch, ...).
        """
        if prepared.estimate.cost > budget:
            raise ExpressionError(prepared.estimate.refusal(budget), self.source)
        if self._direct is not None:
            return self._read(prepared.variables, self._direct)
        try:
            context = cel.Context(variables=prepared.variables, functions=self._functions)
            result = self._program.execute(context)
        except KeyError as exc:
            raise ExpressionError(f"no such key: {exc}", self.source) from exc
        except _FATAL:
            raise
        except BaseException as exc:  # the runtime raises ValueError/TypeError/RuntimeError, pyo3 panics
            reason = str(exc).replace(
                f"Function '{cel_ast.PROJECT}' error: Python function call failed", "map()"
            )
            raise ExpressionError(f"evaluation failed: {reason}", self.source) from exc
        try:
            return _to_json(result)
        except ExpressionError as exc:
            raise ExpressionError(exc.message, self.source) from exc
        except Exception as exc:
            raise ExpressionError(f"result cannot be represented in JSON: {exc!r}", self.source) from exc

    def _read(self, variables: Mapping[str, Any], path: tuple[str, ...]) -> Any:
        """The value at ``path``, as CEL would return it, without the runtime (converting a value in
        and out of it costs ~10 us per string or map). The value is shared, not copied."""
        if path[0] not in variables:
            raise ExpressionError(f"evaluation failed: undeclared reference to {path[0]!r}", self.source)
        value: Any = variables[path[0]]
        for depth, key in enumerate(path[1:], start=1):
            if not isinstance(value, Mapping):
                where = ".".join(path[:depth])
                raise ExpressionError(f"evaluation failed: {where} is not a map", self.source)
            if key not in value:
                raise ExpressionError(f"no such key: {key!r}", self.source)
            value = value[key]
        return value  # :meth:`prepare` encoded it to measure it: the runtime would accept it

    def evaluate(self, variables: Mapping[str, Any]) -> Any:
        """Evaluate against ``variables`` (see :meth:`EvalContext.variables`); JSON-compatible result.

        Raises :class:`ExpressionError` on any evaluation failure (missing key, type mismatch, ...)
        and, before running anything, when the evaluation would cost more than :data:`BUDGET`.
        """
        return self.run(self.prepare(variables))

    def evaluate_bool(self, variables: Mapping[str, Any]) -> bool:
        """Evaluate a condition; anything but a boolean result is an :class:`ExpressionError`."""
        result = self.evaluate(variables)
        if not isinstance(result, bool):
            raise ExpressionError(
                f"condition must evaluate to a bool, got {type(result).__name__}", self.source
            )
        return result


def compile_expression(source: str, variables: tuple[str, ...] = VARIABLES) -> CompiledExpression:
    """Compile and statically check one CEL expression; :class:`ExpressionError` says what is wrong.

    ``variables``: the names it may use (:data:`VARIABLES`, or :data:`MATCH_VARIABLES` for a
    ``wait_for.match``)."""
    if len(source) > MAX_EXPRESSION_LENGTH:
        raise ExpressionError(
            f"expression is {len(source)} characters long; the limit is {MAX_EXPRESSION_LENGTH}. "
            "Split the work into steps"
        )
    stripped = source.strip()
    if not stripped:
        raise ExpressionError("expression is empty")
    if stripped.startswith("${{"):
        raise ExpressionError("write conditions as bare CEL, without `${{ }}`", source)
    try:
        program = cel.compile(stripped)
    except Exception as exc:  # ValueError for syntax errors
        first = (str(exc).splitlines() or ["invalid expression"])[0]
        marker = "ERROR: <input>:"
        reason = first[first.index(marker) + len(marker) :] if marker in first else first
        reason = reason.replace("Syntax error: ", "")
        raise ExpressionError(f"does not compile: at {reason.strip()}", source) from exc
    analysis = _analyse(stripped)
    if analysis.problems:
        raise ExpressionError(analysis.problems[0], source)
    if analysis.depth > MAX_COMPREHENSION_DEPTH:
        raise ExpressionError(
            f"comprehensions (all/exists/map/filter) nest {analysis.depth} deep; at most "
            f"{MAX_COMPREHENSION_DEPTH} are allowed",
            source,
        )
    unknown_vars = sorted(set(program.variables()) - set(variables) - analysis.bound)
    if unknown_vars:
        raise ExpressionError(
            f"unknown variable {unknown_vars[0]!r}; expressions can use {', '.join(variables)}", source
        )
    unknown_funcs = sorted(f for f in program.functions() if f[:1].isalpha() and f not in ALLOWED_FUNCTIONS)
    if unknown_funcs:
        raise ExpressionError(f"unknown function {unknown_funcs[0]!r}", source)
    try:
        tree = cel_ast.parse(stripped)
    except cel_ast.CelSyntaxError as exc:
        raise ExpressionError(f"unsupported syntax: {exc}", source) from exc
    try:
        runnable = cel.compile(cel_ast.render(tree))
    except Exception as exc:  # a rendering bug must not pass validation silently
        raise ExpressionError(f"unsupported syntax: cannot rewrite for evaluation ({exc})", source) from exc
    helpers = _EXTENSIONS | _INTERNAL
    functions = {name: helpers[name] for name in runnable.functions() if name in helpers}
    for problem in expression_cost.static_problems(tree, stripped, frozenset(functions)):
        raise ExpressionError(problem, source)
    return CompiledExpression(
        source=stripped,
        step_refs=analysis.step_refs,
        context_refs=analysis.context_refs,
        _program=runnable,
        _tree=tree,
        _reads=expression_cost.reads(tree),
        _functions=functions,
        _direct=expression_cost.static_path(tree, frozenset()),
    )
