"""Avro binary readers compiled from a parsed record schema: the projector's hot-path decoder.

``fastavro.schemaless_reader`` re-examines its schema and builds a reader state on every call:
most of the ~20 µs it takes per ``RunEvent``. :func:`compile_reader` turns one flat record schema
into straight-line Python once (fields in order, a varint fast path for one-byte lengths and
values) and returns the dict fastavro would.

It covers flat records of ``string``, ``int``, ``long``, ``boolean`` and ``["null", X]`` of those
(what ``RunEvent`` is made of); for any other schema it returns ``None``. A compiled reader
*raises* on anything unexpected (a truncated body, trailing bytes, bad UTF-8, a union index out of
range): the caller then decodes the record with :func:`services.contracts.serde.decode`, whose
verdict (the record, or the reason it is refused) stands. So it only ever answers for records
fastavro reads the same way (property-tested in ``tests/unit/projector/test_avro_reader.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Reader = Callable[[bytes, int], dict[str, Any]]

_SCALARS = ("string", "int", "long", "boolean")


class Malformed(ValueError):
    """The body is not what the compiled schema reads (the generic decoder says why)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """Avro ``long`` at ``pos`` (zigzag varint), and the position after it."""
    shift = 0
    n = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 63:
            raise Malformed("varint longer than 10 bytes")


def _kind(field_type: Any) -> tuple[str, bool] | None:
    """(scalar type, nullable) of a field the compiler handles, else None."""
    if isinstance(field_type, str) and field_type in _SCALARS:
        return field_type, False
    if (
        isinstance(field_type, list)
        and len(field_type) == 2
        and field_type[0] == "null"
        and isinstance(field_type[1], str)
        and field_type[1] in _SCALARS
    ):
        return field_type[1], True
    return None


def _long_lines(target: str, indent: str) -> list[str]:
    return [
        f"{indent}b = data[p]",
        f"{indent}if b < 0x80:",
        f"{indent}    {target} = (b >> 1) ^ -(b & 1)",
        f"{indent}    p += 1",
        f"{indent}else:",
        f"{indent}    {target}, p = _varint(data, p)",
    ]


def _value_lines(kind: str, target: str, indent: str) -> list[str]:
    if kind in ("int", "long"):
        return _long_lines(target, indent)
    if kind == "boolean":
        return [
            f"{indent}b = data[p]",
            f"{indent}if b > 1:",
            f"{indent}    raise _Malformed('boolean byte')",
            f"{indent}{target} = b == 1",
            f"{indent}p += 1",
        ]
    # string: a length, then that many bytes of UTF-8 (strict, as fastavro)
    return [
        *_long_lines("n", indent),
        f"{indent}e = p + n",
        f"{indent}if n < 0 or e > size:",
        f"{indent}    raise _Malformed('string beyond the body')",
        f"{indent}{target} = data[p:e].decode('utf-8')",
        f"{indent}p = e",
    ]


def compile_reader(schema: Any) -> Reader | None:
    """A reader of ``schema`` (a parsed flat record) as ``reader(data, start) -> record``, or None.

    ``start`` is where the Avro body begins in ``data`` (after the wire header); the body must
    end exactly at the end of ``data``.
    """
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    fields = schema.get("fields")
    if not isinstance(fields, list) or not fields:
        return None
    lines = ["def read(data, p):", "    size = len(data)"]
    names: list[str] = []
    for i, spec in enumerate(fields):
        kind = _kind(spec.get("type")) if isinstance(spec, dict) else None
        if kind is None or not isinstance(spec.get("name"), str):
            return None
        scalar, nullable = kind
        names.append(spec["name"])
        target = f"v{i}"
        if nullable:
            lines += _long_lines("u", "    ")
            lines += ["    if u == 0:", f"        {target} = None", "    elif u == 1:"]
            lines += _value_lines(scalar, target, "        ")
            lines += ["    else:", "        raise _Malformed('union index')"]
        else:
            lines += _value_lines(scalar, target, "    ")
    lines += ["    if p != size:", "        raise _Malformed('trailing bytes')"]
    lines.append("    return {" + ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names)) + "}")
    namespace: dict[str, Any] = {"_varint": _varint, "_Malformed": Malformed}
    exec(compile("\n".join(lines), f"<avro reader {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    reader: Reader = namespace["read"]
    return reader
