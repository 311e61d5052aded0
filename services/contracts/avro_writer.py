"""Avro binary writers compiled from the catalog's schemas: the hot path's encoder.

``fastavro.schemaless_writer`` interprets the schema on every call (type dispatch per field, a
union branch search per optional value, a buffer object per record): most of what the router and
executor spend to encode their ~three records per step. :func:`compile_writer` turns one parsed
schema into straight-line Python once — one ``bytearray``, the fields in order, a branch index
written as a constant — and produces exactly the bytes fastavro produces (property-tested in
``tests/unit/contracts/test_avro_writer.py``).

It covers the types the engine's schemas use (records, enums, arrays, ``null``/``boolean``/
``int``/``long``/``string``/``bytes``, ``["null", X]`` unions and unions of records written as
fastavro's ``(name, record)`` tuples). For anything else it returns ``None`` and, for a datum it
cannot place (a union of records given as a bare dict), raises :class:`Unsupported`: the caller
then uses fastavro, so behaviour never depends on what this module knows.

A datum that does not fit its schema raises ``TypeError``/``ValueError`` (as fastavro does),
never writes a half-valid record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Writer = Callable[[Mapping[str, Any]], bytes]

_INT_RANGE = (-(2**31), 2**31 - 1)
_LONG_RANGE = (-(2**63), 2**63 - 1)


class Unsupported(Exception):
    """This datum needs fastavro (e.g. a union of records given without its branch name)."""


def _zigzag(n: int) -> bytes:
    """Avro ``long``: zigzag, then base-128 varint (little end first)."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


#: Encoded small non-negative lengths and values (most lengths, attempts, versions).
_SMALL = tuple(_zigzag(n) for n in range(4096))


def _long(value: Any, name: str) -> bytes:
    if type(value) is not int and not isinstance(value, int):  # bool is an int, as for fastavro
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if 0 <= value < 4096:
        return _SMALL[value]
    if not _LONG_RANGE[0] <= value <= _LONG_RANGE[1]:
        raise ValueError(f"{name}: {value} does not fit an Avro long")
    return _zigzag(value)


def _int(value: Any, name: str) -> bytes:
    if type(value) is int and 0 <= value < 4096:
        return _SMALL[value]
    if not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
        raise ValueError(f"{name}: {value} does not fit an Avro int")
    return _zigzag(value)


def _blob(value: Any, name: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name}: expected bytes, got {type(value).__name__}")
    return bytes(value)


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 4096 else _zigzag(n)


class _Compiler:
    """Generates one function per record schema; the source is kept for debugging (``source``)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {
            "_long": _long,
            "_int": _int,
            "_SMALL": _SMALL,
            "_zigzag": _zigzag,
            "_blob": _blob,
            "_length": _length,
            "Unsupported": Unsupported,
            "TypeError": TypeError,
            "ValueError": ValueError,
        }
        self.counter = 0

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any) -> str:
        name = self.fresh("_c")
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def value(self, schema: Any, expr: str, label: str, indent: int) -> bool:
        """Emit code writing ``expr`` (a local name) per ``schema``; False if unsupported."""
        lab = self.const(label)
        if isinstance(schema, str):
            if schema == "null":
                self.emit(indent, f"if {expr} is not None: raise TypeError({lab} + ': expected null')")
            elif schema == "boolean":
                self.emit(
                    indent, f"if type({expr}) is not bool: raise TypeError({lab} + ': expected a boolean')"
                )
                self.emit(indent, f"out.append(1 if {expr} else 0)")
            elif schema == "int":
                self.emit(indent, f"out += _int({expr}, {lab})")
            elif schema == "long":
                self.emit(indent, f"out += _long({expr}, {lab})")
            elif schema == "string":
                b = self.fresh("b")
                self.emit(
                    indent, f"if not isinstance({expr}, str): raise TypeError({lab} + ': expected a string')"
                )
                self.emit(indent, f"{b} = {expr}.encode()")  # a lone surrogate raises (a ValueError)
                self.emit(
                    indent, f"out += _SMALL[len({b})] if len({b}) < 4096 else _zigzag(len({b})); out += {b}"
                )
            elif schema == "bytes":
                b = self.fresh("b")
                self.emit(indent, f"{b} = _blob({expr}, {lab})")
                self.emit(indent, f"out += _length(len({b})); out += {b}")
            else:
                return False  # a named reference, a float, ...: leave it to fastavro
            return True
        if isinstance(schema, list):
            return self.union(schema, expr, label, indent)
        if not isinstance(schema, dict):
            return False
        kind = schema.get("type")
        if kind == "record":
            return self.record_fields(schema, expr, indent)
        if kind == "enum":
            symbols = self.const({s: i for i, s in enumerate(schema["symbols"])})
            i = self.fresh("i")
            self.emit(indent, f"{i} = {symbols}.get({expr}) if type({expr}) is str else None")
            self.emit(indent, f"if {i} is None: raise ValueError({lab} + f': {{{expr}!r}} is not a symbol')")
            self.emit(indent, f"out += _length({i})")
            return True
        if kind == "array":
            item = self.fresh("v")
            self.emit(
                indent,
                f"if not isinstance({expr}, (list, tuple)): raise TypeError({lab} + ': expected a list')",
            )
            self.emit(indent, f"if {expr}:")
            self.emit(indent + 1, f"out += _length(len({expr}))")
            self.emit(indent + 1, f"for {item} in {expr}:")
            if not self.value(schema["items"], item, f"{label}[]", indent + 2):
                return False
            self.emit(indent, "out.append(0)")
            return True
        if isinstance(kind, str | list | dict) and set(schema) <= {"type", "doc"}:
            return self.value(kind, expr, label, indent)
        return False

    def union(self, branches: list[Any], expr: str, label: str, indent: int) -> bool:
        if len(branches) == 2 and "null" in branches:
            null_at = branches.index("null")
            other = branches[1 - null_at]
            self.emit(indent, f"if {expr} is None:")
            self.emit(indent + 1, f"out.append({null_at * 2})")
            self.emit(indent, "else:")
            self.emit(indent + 1, f"out.append({(1 - null_at) * 2})")
            return self.value(other, expr, label, indent + 1)
        if all(isinstance(b, dict) and b.get("type") == "record" for b in branches):
            # fastavro's tuple notation names the branch: ("switchyard.StepResult", {...}).
            self.emit(indent, f"if type({expr}) is not tuple or len({expr}) != 2: raise Unsupported()")
            names = [b["name"] for b in branches]
            for index, branch in enumerate(branches):
                body = self.fresh("r")
                keyword = "if" if index == 0 else "elif"
                self.emit(indent, f"{keyword} {expr}[0] == {names[index]!r}:")
                self.emit(indent + 1, f"out.append({index * 2})")
                self.emit(indent + 1, f"{body} = {expr}[1]")
                if not self.record_fields(branch, body, indent + 1):
                    return False
            self.emit(indent, "else: raise Unsupported()")
            return True
        return False

    def record_fields(self, schema: dict[str, Any], expr: str, indent: int) -> bool:
        self.emit(indent, f"if not isinstance({expr}, dict): raise TypeError('expected a record (dict)')")
        for fld in schema["fields"]:
            local = self.fresh("f")
            if "default" in fld:
                self.emit(indent, f"{local} = {expr}.get({fld['name']!r}, {self.const(fld['default'])})")
            else:
                self.emit(indent, f"{local} = {expr}.get({fld['name']!r})")
            if not self.value(fld["type"], local, f"{schema['name']}.{fld['name']}", indent):
                return False
        return True


def compile_writer(parsed: Any) -> Writer | None:
    """The writer of records of ``parsed`` (a ``fastavro.parse_schema`` record schema), or None
    when the schema uses something this module does not compile."""
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        return None
    compiler = _Compiler()
    compiler.emit(0, "def write(datum):")
    compiler.emit(1, "out = bytearray()")
    if not compiler.record_fields(parsed, "datum", 1):
        return None
    compiler.emit(1, "return bytes(out)")
    source = "\n".join(compiler.lines)
    namespace: dict[str, Any] = dict(compiler.consts)
    exec(compile(source, f"<avro writer {parsed.get('name')}>", "exec"), namespace)  # noqa: S102
    writer: Writer = namespace["write"]
    writer.source = source  # type: ignore[attr-defined]
    return writer
