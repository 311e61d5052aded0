"""A syntax tree for the CEL expressions of definitions: parse, walk and render them.

The ``cel`` package compiles and runs expressions but does not expose its syntax tree, and the
engine needs one: to know which parts of ``trigger`` / ``steps`` an expression reads, to bound what
it can cost (:mod:`services.workflow.expression_cost`), and to rewrite ``a.b`` into ``a["b"]``
before handing it to the runtime. That rewrite is the same CEL (on a map both read key ``"b"`` and
fail the same way when it is missing) but in this runtime ``a.b`` copies the whole value it
selects, so ``trigger.data.x`` on a 100k-element payload took 30 ms while ``trigger["data"]["x"]``
takes microseconds.

This parser follows the CEL grammar (precedence ``?:`` < ``||`` < ``&&`` < relations < ``+ -`` <
``* / %`` < unary < member access). It is only ever given sources that ``cel.compile`` accepted;
constructs it does not know (message construction ``T{...}``, leading-dot names) raise
:class:`CelSyntaxError` and are refused by validation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

#: The comprehension macros (``has`` is parsed as a presence test, see :class:`Select`).
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class CelSyntaxError(ValueError):
    """A source the parser cannot read (the runtime may still accept it; validation refuses it)."""


# --- tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tok:
    """One token: ``kind`` is ``ident``, ``int``, ``uint``, ``double``, ``string``, ``bytes``,
    ``punct`` or ``end``; ``value`` is the decoded value of a string or bytes literal."""

    kind: str
    text: str
    start: int
    value: str = ""


_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F]+[uU]?"
    r"|(?:[0-9]+\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
    r"|[0-9]+[uU]?"
)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING_START = re.compile(r"(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"|'''|\"|')")
_PUNCT = ("&&", "||", "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":",
          ",", ".", "(", ")", "[", "]", "{", "}")  # fmt: skip
_SIMPLE_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
                   "\\": "\\", "'": "'", '"': '"', "`": "`", "?": "?"}  # fmt: skip


def _decode(body: str, raw: bool) -> str:
    if raw:
        return body
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\" or i + 1 >= len(body):
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc in "xX":
            out.append(chr(int(body[i + 2 : i + 4], 16)))
            i += 4
        elif esc == "u":
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif esc == "U":
            out.append(chr(int(body[i + 2 : i + 10], 16)))
            i += 10
        elif esc in "0123":
            out.append(chr(int(body[i + 1 : i + 4], 8)))
            i += 4
        else:
            raise CelSyntaxError(f"unknown escape \\{esc}")
    return "".join(out)


def _scan_string(src: str, i: int) -> tuple[int, Tok]:
    m = _STRING_START.match(src, i)
    assert m is not None
    prefix = m.group()[: -len(m.group().lstrip("rRbB"))] if m.group()[0] in "rRbB" else ""
    quote = m.group()[len(prefix) :]
    j = m.end()
    while j < len(src):
        if src.startswith(quote, j):
            body = src[m.end() : j]
            raw = "r" in prefix.lower()
            kind = "bytes" if "b" in prefix.lower() else "string"
            return j + len(quote), Tok(kind, src[i : j + len(quote)], i, _decode(body, raw))
        if src[j] == "\\" and "r" not in prefix.lower():
            j += 2
            continue
        if src[j] in "\r\n" and len(quote) == 1:
            break
        j += 1
    raise CelSyntaxError("unterminated string literal")


def tokens(src: str) -> Iterator[Tok]:
    """The tokens of ``src``, ending with one ``end`` token."""
    i = 0
    while i < len(src):
        ch = src[i]
        if ch.isspace():
            i += 1
        elif src.startswith("//", i):
            nl = src.find("\n", i)
            i = len(src) if nl < 0 else nl + 1
        elif _STRING_START.match(src, i):
            i, tok = _scan_string(src, i)
            yield tok
        elif (m := _NUMBER.match(src, i)) and (ch.isdigit() or src[i + 1 : i + 2].isdigit()):
            text = m.group()
            kind = "double" if any(c in text for c in ".eE") and text[:2].lower() != "0x" else "int"
            if text[-1] in "uU":
                kind = "uint"
            yield Tok(kind, text, i)
            i = m.end()
        elif m := _IDENT.match(src, i):
            yield Tok("ident", m.group(), i)
            i = m.end()
        else:
            for p in _PUNCT:
                if src.startswith(p, i):
                    yield Tok("punct", p, i)
                    i += len(p)
                    break
            else:
                raise CelSyntaxError(f"unexpected character {ch!r} at {i}")
    yield Tok("end", "", len(src))


# --- syntax tree ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """Base of every syntax node; ``start``/``end`` delimit its source text."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Lit(Node):
    """A literal; ``kind`` as in :class:`Tok` (plus ``bool`` and ``null``), ``value`` decoded text."""

    kind: str
    text: str
    value: str = ""


@dataclass(frozen=True, slots=True)
class Ident(Node):
    name: str


@dataclass(frozen=True, slots=True)
class Select(Node):
    """``operand.field``; ``test`` for the presence test ``has(operand.field)``."""

    operand: Expr
    field: str
    test: bool = False


@dataclass(frozen=True, slots=True)
class Index(Node):
    operand: Expr
    index: Expr


@dataclass(frozen=True, slots=True)
class Call(Node):
    """``name(args)`` or, with a ``target``, ``target.name(args)``."""

    name: str
    target: Expr | None
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Comp(Node):
    """A comprehension macro ``target.macro(var, *args)`` (``map`` takes an optional filter)."""

    macro: str
    target: Expr
    var: str
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class ListLit(Node):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class MapLit(Node):
    entries: tuple[tuple[Expr, Expr], ...]


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str
    operand: Expr


@dataclass(frozen=True, slots=True)
class Binary(Node):
    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Cond(Node):
    cond: Expr
    then: Expr
    other: Expr


Expr = Lit | Ident | Select | Index | Call | Comp | ListLit | MapLit | Unary | Binary | Cond

_RELATIONS = frozenset({"<", "<=", ">", ">=", "==", "!=", "in"})


class _Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = list(tokens(src))
        self.pos = 0

    @property
    def tok(self) -> Tok:
        return self.toks[self.pos]

    def _end(self) -> int:
        prev = self.toks[self.pos - 1]
        return prev.start + len(prev.text)

    def take(self, text: str | None = None) -> Tok:
        tok = self.tok
        if text is not None and not (tok.text == text and tok.kind in ("punct", "ident")):
            raise CelSyntaxError(f"expected {text!r} at {tok.start}, found {tok.text!r}")
        self.pos += 1
        return tok

    def at(self, *texts: str) -> bool:
        return self.tok.kind in ("punct", "ident") and self.tok.text in texts

    def parse(self) -> Expr:
        node = self.expr()
        if self.tok.kind != "end":
            raise CelSyntaxError(f"unexpected {self.tok.text!r} at {self.tok.start}")
        return node

    def expr(self) -> Expr:
        start = self.tok.start
        cond = self.binary(0)
        if not self.at("?"):
            return cond
        self.take("?")
        then = self.binary(0)
        self.take(":")
        other = self.expr()
        return Cond(start, self._end(), cond, then, other)

    _LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"||"}),
        frozenset({"&&"}),
        _RELATIONS,
        frozenset({"+", "-"}),
        frozenset({"*", "/", "%"}),
    )

    def binary(self, level: int) -> Expr:
        if level == len(self._LEVELS):
            return self.unary()
        start = self.tok.start
        left = self.binary(level + 1)
        while self.at(*self._LEVELS[level]):
            op = self.take().text
            right = self.binary(level + 1)
            left = Binary(start, self._end(), op, left, right)
        return left

    def unary(self) -> Expr:
        start = self.tok.start
        if self.at("!", "-"):
            op = self.take().text
            return Unary(start, self._end(), op, self.unary())
        return self.member()

    def args(self, close: str) -> list[Expr]:
        items: list[Expr] = []
        while not self.at(close):
            items.append(self.expr())
            if not self.at(","):
                break
            self.take(",")
        self.take(close)
        return items

    def member(self) -> Expr:
        start = self.tok.start
        node = self.primary()
        while True:
            if self.at("."):
                self.take(".")
                name = self.take()
                if name.kind != "ident":
                    raise CelSyntaxError(f"expected a field name at {name.start}")
                if self.at("("):
                    self.take("(")
                    node = self._call(start, name.text, node, self.args(")"))
                else:
                    node = Select(start, self._end(), node, name.text)
            elif self.at("["):
                self.take("[")
                index = self.expr()
                self.take("]")
                node = Index(start, self._end(), node, index)
            elif self.at("{"):
                raise CelSyntaxError("message construction (`Type{...}`) is not supported")
            else:
                return node

    def _call(self, start: int, name: str, target: Expr | None, args: list[Expr]) -> Expr:
        if target is not None and name in MACROS and args and isinstance(args[0], Ident):
            wanted = (2, 3) if name == "map" else (2,)
            if len(args) in wanted:
                return Comp(start, self._end(), name, target, args[0].name, tuple(args[1:]))
        if target is None and name == "has":
            if len(args) != 1 or not isinstance(args[0], Select):
                raise CelSyntaxError("has() takes a field selection, e.g. has(a.b)")
            sel = args[0]
            return Select(start, self._end(), sel.operand, sel.field, test=True)
        return Call(start, self._end(), name, target, tuple(args))

    def primary(self) -> Expr:
        tok = self.tok
        start = tok.start
        if tok.kind == "ident":
            self.take()
            if tok.text in ("true", "false"):
                return Lit(start, self._end(), "bool", tok.text)
            if tok.text == "null":
                return Lit(start, self._end(), "null", tok.text)
            if self.at("("):
                self.take("(")
                return self._call(start, tok.text, None, self.args(")"))
            return Ident(start, self._end(), tok.text)
        if tok.kind in ("int", "uint", "double", "string", "bytes"):
            self.take()
            return Lit(start, self._end(), tok.kind, tok.text, tok.value)
        if self.at("("):
            self.take("(")
            inner = self.expr()
            self.take(")")
            return inner
        if self.at("["):
            self.take("[")
            return self._list(start)
        if self.at("{"):
            self.take("{")
            entries: list[tuple[Expr, Expr]] = []
            while not self.at("}"):
                key = self.expr()
                self.take(":")
                entries.append((key, self.expr()))
                if not self.at(","):
                    break
                self.take(",")
            self.take("}")
            return MapLit(start, self._end(), tuple(entries))
        if self.at("."):
            raise CelSyntaxError("names with a leading dot are not supported")
        raise CelSyntaxError(f"unexpected {tok.text or 'end of input'!r} at {tok.start}")

    def _list(self, start: int) -> Expr:
        items = self.args("]")
        return ListLit(start, self._end(), tuple(items))


def parse(src: str) -> Expr:
    """The syntax tree of ``src``; :class:`CelSyntaxError` if it cannot be read."""
    try:
        return _Parser(src).parse()
    except RecursionError as exc:
        raise CelSyntaxError("expression nests too deeply") from exc


def children(node: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of ``node``."""
    if isinstance(node, Select):
        return (node.operand,)
    if isinstance(node, Index):
        return (node.operand, node.index)
    if isinstance(node, Call):
        return ((node.target,) if node.target is not None else ()) + node.args
    if isinstance(node, Comp):
        return (node.target, *node.args)
    if isinstance(node, ListLit):
        return node.items
    if isinstance(node, MapLit):
        return tuple(part for entry in node.entries for part in entry)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Cond):
        return (node.cond, node.then, node.other)
    return ()


def walk(node: Expr) -> Iterator[Expr]:
    """``node`` and every node below it, parents first."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(children(current)))


#: The helper a projection runs as (see :func:`projection`); not callable from user expressions.
PROJECT = "_switchyard_project"


def projection(node: Expr) -> tuple[str, ...] | None:
    """The field path of a ``map`` that only projects its elements (``items.map(i, i.a.b)`` ->
    ``("a", "b")``; ``items.map(i, i)`` -> ``()``), else None.

    The runtime's ``map`` copies its accumulator on every element (quadratic), so a projection runs
    as one call of a linear helper instead, with the same result and the same failures.
    """
    if not (isinstance(node, Comp) and node.macro == "map" and len(node.args) == 1):
        return None
    fields: list[str] = []
    body = node.args[0]
    while True:
        if isinstance(body, Select) and not body.test:
            fields.append(body.field)
            body = body.operand
        elif isinstance(body, Index) and isinstance(body.index, Lit) and body.index.kind == "string":
            fields.append(body.index.value)
            body = body.operand
        else:
            break
    if isinstance(body, Ident) and body.name == node.var:
        return tuple(reversed(fields))
    return None


def _wrap(node: Expr) -> str:
    text = render(node)
    atomic = isinstance(node, Ident | Select | Index | Call | Comp | ListLit | MapLit)
    atomic = atomic or (isinstance(node, Lit) and node.kind not in ("int", "double", "uint"))
    return text if atomic else f"({text})"


def _quote(text: str) -> str:
    """A CEL string literal for ``text`` (escapes cover every character)."""
    return '"' + "".join(c if c.isalnum() or c in " _-." else f"\\U{ord(c):08x}" for c in text) + '"'


def render(node: Expr) -> str:
    """CEL source for ``node`` with every field selection written as an index (see module doc)."""
    if isinstance(node, Lit):
        return node.text
    if isinstance(node, Ident):
        return node.name
    if isinstance(node, Select):
        if node.test:
            return f"has({_wrap(node.operand)}.{node.field})"
        return f'{_wrap(node.operand)}["{node.field}"]'
    if isinstance(node, Index):
        return f"{_wrap(node.operand)}[{render(node.index)}]"
    if isinstance(node, Call):
        args = ", ".join(render(a) for a in node.args)
        return (
            f"{_wrap(node.target)}.{node.name}({args})" if node.target is not None else f"{node.name}({args})"
        )
    if isinstance(node, Comp):
        fields = projection(node)
        if fields is not None:
            return f"{PROJECT}({render(node.target)}, [{', '.join(_quote(f) for f in fields)}])"
        args = ", ".join(render(a) for a in node.args)
        return f"{_wrap(node.target)}.{node.macro}({node.var}, {args})"
    if isinstance(node, ListLit):
        return "[" + ", ".join(render(i) for i in node.items) + "]"
    if isinstance(node, MapLit):
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in node.entries) + "}"
    if isinstance(node, Unary):
        if node.op == "-" and isinstance(node.operand, Lit) and node.operand.kind in ("int", "double"):
            return f"-{node.operand.text}"  # keeps -9223372036854775808 a literal
        return f"{node.op}{_wrap(node.operand)}"
    if isinstance(node, Binary):
        return f"{_wrap(node.left)} {node.op} {_wrap(node.right)}"
    return f"{_wrap(node.cond)} ? {_wrap(node.then)} : {_wrap(node.other)}"
