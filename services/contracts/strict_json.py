"""Strict JSON at the engine's edges: what a tenant or an action hands us, and what we write back.

The standard library accepts lone UTF-16 surrogates (``"\\ud800"``), ``NaN``/``Infinity`` and
numbers that overflow to ``inf``; each of those later fails to *encode* (UTF-8, Avro, JSON) deep
inside a processor, far from the record that caused it. orjson refuses all of them when decoding,
so a value that passed :func:`loads` can always be written again by :func:`dumps`.
"""

from __future__ import annotations

from typing import Any

import orjson

#: Deepest nesting accepted (orjson itself stops at 1024).
MAX_DEPTH = 64


class StrictJSONError(ValueError):
    """Refused JSON; ``kind`` is the dead-letter ``error_kind``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of ``value``, counted up to ``limit + 1`` (iterative: no recursion limit)."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def loads(data: str | bytes, what: str = "JSON", max_depth: int = MAX_DEPTH) -> Any:
    """Decode strictly: invalid UTF-8 → ``invalid_utf8``; lone surrogates, NaN, infinities, bad
    syntax → ``invalid_json``; nesting deeper than ``max_depth`` → ``too_deep``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        text = str(exc)
        if isinstance(data, bytes) and "not valid UTF-8" in text and not _valid_utf8(data):
            raise StrictJSONError("invalid_utf8", f"{what} is not valid UTF-8: {text}") from exc
        raise StrictJSONError("invalid_json", f"{what} is not valid JSON: {text}") from exc
    if depth(value, max_depth) > max_depth:
        raise StrictJSONError("too_deep", f"{what} nests deeper than {max_depth} levels")
    return value


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON. Raises :class:`StrictJSONError` (``unencodable``) for what JSON cannot
    carry: lone surrogates, non-string keys, integers beyond 64 bits, non-JSON types."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise StrictJSONError("unencodable", f"value cannot be written as JSON: {exc}") from exc


def dumps_str(value: Any) -> str:
    return dumps(value).decode("utf-8")
