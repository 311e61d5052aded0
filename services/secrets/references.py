"""Secret references in step inputs: their syntax, how they travel, and how they are resolved (pure).

A workflow names a secret in its step inputs as ``${{ secrets.NAME }}`` (``NAME``: an uppercase
letter, then uppercase letters, digits and ``_``; at most 64 characters), as a whole string or
inside text (``"Bearer ${{ secrets.API_TOKEN }}"``). The router never sees a secret's value: it
renders every other template and writes each string of the step command's inputs in *wire form*:

* a string without ``${{`` in it, and without a reference, is written as it is (nearly all);
* any other string is *encoded*: every ``$`` of its text (literal text of the definition, or
  what a template produced, e.g. trigger data) is doubled, and each secret reference is written
  as its canonical text ``${{ secrets.NAME }}`` (a single ``$``).

So a reference in a command can only come from the definition: trigger data that *contains* the
text ``${{ secrets.X }}`` reaches the executor as ``$${{ secrets.X }}`` and is handed to the action
literally, never resolved. The executor (:func:`resolve`) decodes the strings and substitutes the
values just before the action runs; only the action sees them. Keys are never templated nor
resolved.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

OPEN = "${{"
NAME_PATTERN = r"[A-Z][A-Z0-9_]{0,63}"
NAME = re.compile(NAME_PATTERN)
#: A template's expression that is a secret reference (the text between ``${{`` and ``}}``).
REFERENCE_EXPRESSION = re.compile(r"\s*secrets\s*\.\s*(" + NAME_PATTERN + r")\s*")
# A reference in an encoded string: the canonical form, spacing tolerated.
_REFERENCE = re.compile(r"\$\{\{\s*secrets\.(" + NAME_PATTERN + r")\s*\}\}")


def reference(name: str) -> str:
    """The canonical text of a reference to the secret ``name`` (what a command carries)."""
    return f"{OPEN} secrets.{name} }}}}"


def encode(text: str) -> str:
    """A string without references in wire form: as it is unless it holds ``${{``."""
    return text.replace("$", "$$") if OPEN in text else text


def encode_part(text: str) -> str:
    """A piece of literal text of a string that also holds references (always encoded)."""
    return text.replace("$", "$$")


def _scan(text: str) -> Iterator[str | tuple[str]]:
    """Literal pieces and 1-tuples of referenced names of an encoded string."""
    literal: list[str] = []
    start = 0
    i = text.find("$")
    while i >= 0:
        literal.append(text[start:i])
        if text.startswith("$$", i):
            literal.append("$")
            start = i + 2
        else:
            match = _REFERENCE.match(text, i)
            if match is None:  # a lone "$" (not written by the router): kept literally
                literal.append("$")
                start = i + 1
            else:
                if any(literal):
                    yield "".join(literal)
                literal = []
                yield (match.group(1),)
                start = match.end()
        i = text.find("$", start)
    literal.append(text[start:])
    if any(literal):
        yield "".join(literal)


def names_in(value: Any) -> frozenset[str]:
    """The secret names referenced anywhere in ``value`` (a JSON document in wire form)."""
    found: set[str] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if OPEN in item:
                found.update(p[0] for p in _scan(item) if isinstance(p, tuple))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return frozenset(found)


def resolve_text(text: str, values: Mapping[str, str] | Callable[[str], str]) -> str:
    """``text`` from wire form: decoded, references replaced by their values."""
    if OPEN not in text:
        return text
    get = values.__getitem__ if isinstance(values, Mapping) else values
    return "".join(p if isinstance(p, str) else get(p[0]) for p in _scan(text))


def resolve(value: Any, values: Mapping[str, str]) -> Any:
    """``value`` (JSON, wire form) as the action receives it; ``values`` holds every name used."""
    if isinstance(value, str):
        return resolve_text(value, values)
    if isinstance(value, dict):
        return {k: resolve(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, values) for v in value]
    return value
