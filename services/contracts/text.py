"""Text that any record can carry: valid UTF-8 and of bounded length.

A Python ``str`` may hold lone UTF-16 surrogates (``"\\ud800"``): the standard library's JSON
decoder produces them from escapes, and exception messages quote them. Such a string cannot be
encoded as UTF-8, so an Avro string field, a Kafka header or a key holding one fails to encode
deep inside a processor. Whatever the engine copies from its input into a record it writes goes
through :func:`bounded_text` first.
"""

from __future__ import annotations

ELLIPSIS = "…"


def utf8_safe(text: str) -> str:
    """``text`` with every lone surrogate written as a visible ``\\udxxx`` escape."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def bounded_text(text: str, limit: int) -> str:
    """``text`` made UTF-8-safe and cut to at most ``limit`` characters (an ellipsis marks a cut).

    Only the first ``limit`` characters are looked at, so bounding a huge string costs little."""
    if len(text) <= limit:
        safe = utf8_safe(text)
        if len(safe) <= limit:
            return safe
    else:
        safe = utf8_safe(text[:limit])
    return safe[: max(0, limit - 1)] + ELLIPSIS


def bounded_optional(text: str | None, limit: int) -> str | None:
    return None if text is None else bounded_text(text, limit)
