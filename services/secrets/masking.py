"""Keeping resolved secret values out of what an attempt writes: results and log lines.

An action may echo a secret back (an API that returns the request's headers, an error message
quoting the URL). Before the executor writes a result, :func:`mask` replaces every resolved value
of the attempt in the output and error message by :data:`MASK`. Log lines written while an
attempt runs are masked the same way: :func:`watch` marks the values of the attempt running
in the current task, and the log formatters pass each line through :func:`scrub_line`
(which also applies :func:`~services.contracts.redaction.redact_text`).

Values shorter than :data:`MIN_MASKED_LENGTH` characters are not masked (masking every ``1``
would wreck the output and hides nothing); use real credentials.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from contextvars import ContextVar, Token
from typing import Any

from services.contracts.redaction import MASK, redact_text

MIN_MASKED_LENGTH = 4

_ACTIVE: ContextVar[list[str] | None] = ContextVar("switchyard_attempt_secrets", default=None)


def _forms(values: Collection[str]) -> tuple[str, ...]:
    """The values and their JSON-escaped spellings (as they appear inside a JSON log line), longest
    first so a value containing another is masked whole."""
    forms = {v for v in values if len(v) >= MIN_MASKED_LENGTH}
    forms |= {json.dumps(v, ensure_ascii=True)[1:-1] for v in list(forms)}
    forms |= {json.dumps(v, ensure_ascii=False)[1:-1] for v in list(forms)}
    return tuple(sorted(forms, key=len, reverse=True))


def mask_text(text: str, values: Collection[str]) -> str:
    """``text`` with each of ``values`` (and its JSON-escaped form) replaced by :data:`MASK`."""
    for form in _forms(values):
        if form in text:
            text = text.replace(form, MASK)
    return text


def mask(value: Any, values: Collection[str]) -> Any:
    """A JSON document with ``values`` masked in every string, keys included."""
    if not values:
        return value
    if isinstance(value, str):
        return mask_text(value, values)
    if isinstance(value, dict):
        return {mask_text(k, values) if isinstance(k, str) else k: mask(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, values) for v in value]
    return value


def watch(values: list[str]) -> Token[list[str] | None]:
    """Mask ``values`` (a list the attempt fills as it resolves secrets) in the log lines written by
    the current task, until :func:`unwatch`."""
    return _ACTIVE.set(values)


def unwatch(token: Token[list[str] | None]) -> None:
    _ACTIVE.reset(token)


def scrub_line(line: str) -> str:
    """A formatted log line with the running attempt's secrets and known credential places masked."""
    values = _ACTIVE.get()
    if values:
        line = mask_text(line, values)
    return redact_text(line)
