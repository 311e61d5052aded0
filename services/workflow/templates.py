"""Input templates: how step inputs embed CEL expressions, and how they are rendered.

Syntax (in any string anywhere inside a step's ``inputs``, however deeply nested):

* ``"${{ trigger.data.amount }}"`` — the *whole* string is one template: the value is the native
  JSON type of the CEL result (number, bool, list, map, null, string);
* ``"Hello ${{ trigger.data.name }}!"`` — templates embedded in text are interpolated: strings are
  inserted as they are, any other value as compact JSON (``null``, ``true``, ``[1,2]``);
* ``"$${{ not a template }}"`` — ``$${{`` is an escaped, literal ``${{``;
* ``"Bearer ${{ secrets.API_TOKEN }}"`` — a secret reference (whole, or inside text; nowhere
  else: not inside an expression, not in ``when`` or filters). It is *not* rendered: the rendered
  inputs carry it as a reference, in the wire form of :mod:`services.secrets.references` (every
  string holding ``${{`` or a reference is encoded, so that only the definition can reference a
  secret), and the executor resolves it just before the action runs.

A template ends at the first ``}}`` that is outside CEL string literals and map braces, so
``${{ {"a": {"b": 1}} }}`` works. Keys are never templated. Timestamps render as RFC 3339
strings, durations as seconds, bytes as base64. The JSON of one step's rendered inputs is at most
:data:`~services.workflow.expressions.MAX_RENDERED_BYTES`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.secrets import references
from services.workflow.expression_cost import BUDGET, Estimate
from services.workflow.expressions import (
    MAX_RENDERED_BYTES,
    CompiledExpression,
    ExpressionError,
    Prepared,
    compile_expression,
    scan_string_literal,
)
from services.workflow.problems import PathPart

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

OPEN = "${{"
ESCAPED_OPEN = "$${{"
CLOSE = "}}"


def _find_close(text: str, start: int) -> int:
    """Index of the ``}}`` closing a template whose expression starts at ``start`` (-1 if none)."""
    depth = 0
    i = start
    while i < len(text):
        ch = text[i]
        if ch in "\"'":
            try:
                i, _ = scan_string_literal(text, i)
            except ExpressionError:
                return -1
            continue
        if depth == 0 and text.startswith(CLOSE, i):
            return i
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        i += 1
    return -1


def split_template(text: str) -> list[str | tuple[str]]:
    """Split ``text`` into literal strings and 1-tuples holding expression sources.

    Raises :class:`ExpressionError` for an unclosed ``${{``.
    """
    parts: list[str | tuple[str]] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith(ESCAPED_OPEN, i):
            literal.append(OPEN)
            i += len(ESCAPED_OPEN)
        elif text.startswith(OPEN, i):
            start = i + len(OPEN)
            end = _find_close(text, start)
            if end < 0:
                raise ExpressionError("template `${{` is not closed with `}}`", text)
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append((text[start:end],))
            i = end + len(CLOSE)
        else:
            literal.append(text[i])
            i += 1
    if literal:
        parts.append("".join(literal))
    return parts


def has_template(text: str) -> bool:
    """Whether ``text`` contains a template (an unescaped ``${{``)."""
    return any(isinstance(p, tuple) for p in split_template(text))


@dataclass(frozen=True, slots=True)
class _SecretRef:
    name: str


@dataclass(frozen=True, slots=True)
class _Whole:
    expr: CompiledExpression


@dataclass(frozen=True, slots=True)
class _Interpolated:
    parts: tuple[str | CompiledExpression | _SecretRef, ...]


@dataclass(frozen=True, slots=True)
class _ListNode:
    items: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _DictNode:
    items: tuple[tuple[str, _Node], ...]


@dataclass(frozen=True, slots=True)
class _Literal:
    value: Any


_Node = _Whole | _Interpolated | _ListNode | _DictNode | _Literal


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A template that does not compile: ``path`` is relative to the inputs map."""

    path: tuple[PathPart, ...]
    error: ExpressionError


def _compile_string(text: str, path: tuple[PathPart, ...], problems: list[TemplateProblem]) -> _Node:
    try:
        parts = split_template(text)
    except ExpressionError as exc:
        problems.append(TemplateProblem(path, exc))
        return _Literal(text)
    if not any(isinstance(p, tuple) for p in parts):
        return _Literal("".join(p for p in parts if isinstance(p, str)))
    compiled: list[str | CompiledExpression | _SecretRef] = []
    for part in parts:
        if isinstance(part, str):
            compiled.append(part)
            continue
        secret = references.REFERENCE_EXPRESSION.fullmatch(part[0])
        if secret is not None:
            compiled.append(_SecretRef(secret.group(1)))
            continue
        try:
            compiled.append(compile_expression(part[0]))
        except ExpressionError as exc:
            problems.append(TemplateProblem(path, _secret_misuse(exc)))
            return _Literal(text)
    if len(compiled) == 1 and isinstance(compiled[0], CompiledExpression):
        return _Whole(compiled[0])
    return _Interpolated(tuple(compiled))


def _secret_misuse(exc: ExpressionError) -> ExpressionError:
    """A clearer error for ``secrets`` used other than as ``${{ secrets.NAME }}``."""
    if not exc.message.startswith("unknown variable 'secrets'"):
        return exc
    return ExpressionError(
        "a secret is referenced only as a whole template `${{ secrets.NAME }}` (NAME: an uppercase"
        " letter, then uppercase letters, digits or _, at most 64), never inside an expression",
        exc.expression,
    )


def _compile_node(value: Any, path: tuple[PathPart, ...], problems: list[TemplateProblem]) -> _Node:
    if isinstance(value, str):
        return _compile_string(value, path, problems)
    if isinstance(value, list):
        return _ListNode(tuple(_compile_node(v, (*path, i), problems) for i, v in enumerate(value)))
    if isinstance(value, dict):
        return _DictNode(tuple((k, _compile_node(v, (*path, k), problems)) for k, v in value.items()))
    return _Literal(value)


def _expressions(node: _Node) -> Iterator[CompiledExpression]:
    if isinstance(node, _Whole):
        yield node.expr
    elif isinstance(node, _Interpolated):
        yield from (p for p in node.parts if isinstance(p, CompiledExpression))
    elif isinstance(node, _ListNode):
        for item in node.items:
            yield from _expressions(item)
    elif isinstance(node, _DictNode):
        for _, item in node.items:
            yield from _expressions(item)


def _secret_names(node: _Node) -> Iterator[str]:
    if isinstance(node, _Interpolated):
        yield from (p.name for p in node.parts if isinstance(p, _SecretRef))
    elif isinstance(node, _ListNode):
        for item in node.items:
            yield from _secret_names(item)
    elif isinstance(node, _DictNode):
        for _, item in node.items:
            yield from _secret_names(item)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Wire(str):
    """A rendered string already in wire form (it holds secret references)."""

    __slots__ = ()


def _encoded(value: Any) -> Any:
    """A rendered JSON value in wire form: no string of it but the router's own references can read
    as a secret reference."""
    if isinstance(value, _Wire):
        return str(value)
    if isinstance(value, str):
        return references.encode(value)
    if isinstance(value, list):
        return [_encoded(v) for v in value]
    if isinstance(value, dict):
        return {k: _encoded(v) for k, v in value.items()}
    return value


def _render(node: _Node, prepared: Mapping[int, Prepared]) -> Any:
    if isinstance(node, _Literal):
        return node.value
    if isinstance(node, _Whole):
        return node.expr.run(prepared[id(node.expr)], budget=math.inf)
    if isinstance(node, _Interpolated):
        texts = [
            p if isinstance(p, str | _SecretRef) else _as_text(p.run(prepared[id(p)], budget=math.inf))
            for p in node.parts
        ]
        if not any(isinstance(t, _SecretRef) for t in texts):
            return "".join(t for t in texts if isinstance(t, str))
        return _Wire(
            "".join(
                references.reference(t.name) if isinstance(t, _SecretRef) else references.encode_part(t)
                for t in texts
            )
        )
    if isinstance(node, _ListNode):
        return [_render(item, prepared) for item in node.items]
    return {key: _render(item, prepared) for key, item in node.items}


@dataclass(frozen=True, slots=True)
class CompiledInputs:
    """A step's inputs with every template compiled; build with :func:`compile_inputs`."""

    _root: _DictNode

    @property
    def secret_refs(self) -> frozenset[str]:
        """Names of the secrets the inputs reference."""
        return frozenset(_secret_names(self._root))

    @property
    def step_refs(self) -> frozenset[str]:
        """Ids of the steps referenced by any template."""
        return frozenset(ref for expr in _expressions(self._root) for ref in expr.step_refs)

    @property
    def context_refs(self) -> frozenset[str]:
        """Names of the ``context:`` entries referenced by any template."""
        return frozenset(ref for expr in _expressions(self._root) for ref in expr.context_refs)

    def render(self, variables: Mapping[str, Any]) -> JsonObject:
        """Evaluate all templates; :class:`ExpressionError` on failure or oversized output.

        The result is in wire form (:mod:`services.secrets.references`): secret references stay
        references; :func:`services.secrets.references.resolve` gives what the action receives.

        All the templates of one step are one evaluation: their summed cost bound must fit
        :data:`~services.workflow.expression_cost.BUDGET`, checked before any of them runs.
        """
        prepared = {id(expr): expr.prepare(variables) for expr in _expressions(self._root)}
        if prepared:
            total = sum(p.estimate.cost for p in prepared.values())
            costliest = max(prepared.values(), key=lambda p: p.estimate.cost)
            if total > BUDGET:
                expr = next(e for e in _expressions(self._root) if prepared[id(e)] is costliest)
                reason = Estimate(total, costliest.estimate.reason).refusal()
                raise ExpressionError(f"rendering the inputs: {reason}", expr.source)
        rendered: JsonObject = _render(self._root, prepared)
        text = json.dumps(rendered, separators=(",", ":"), ensure_ascii=False)
        # Only a string holding "${{" (a reference, or text that looks like one) needs encoding;
        # JSON never escapes those characters, so the text says whether there is one. Encoding
        # doubles "$": the limit applies to what the command carries.
        if references.OPEN in text:
            rendered = _encoded(rendered)
            text = json.dumps(rendered, separators=(",", ":"), ensure_ascii=False)
        size = len(text.encode())
        if size > MAX_RENDERED_BYTES:
            raise ExpressionError(
                f"rendered inputs are {size} bytes of JSON; the limit is {MAX_RENDERED_BYTES} "
                "(pass references to large data, not the data)"
            )
        return rendered


def compile_inputs(inputs: Mapping[str, Any]) -> tuple[CompiledInputs, Sequence[TemplateProblem]]:
    """Compile every template in ``inputs``; also return the problems found (empty when valid)."""
    problems: list[TemplateProblem] = []
    root = _DictNode(tuple((k, _compile_node(v, (k,), problems)) for k, v in inputs.items()))
    return CompiledInputs(root), problems
