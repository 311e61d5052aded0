"""Parsing command-line option values that need more than a type: bad values are usage errors.

Each raises :class:`typer.BadParameter`, so a bad value ends in one error message and exit
code 2, never a traceback.
"""

from __future__ import annotations

import math
from datetime import datetime

import typer

from services.projector.queries import parse_since


def since(value: str | None, option: str = "--since") -> datetime | None:
    """``--since``: ISO 8601 (naive means UTC) or a duration ago (``90m``, ``2d``)."""
    if value is None:
        return None
    hint = f"'{option}'"
    if len(value) > 64:
        raise typer.BadParameter(
            f"{value[:40]!r}… is too long for a date/time or a duration", param_hint=hint
        )
    try:
        return parse_since(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    except OverflowError:  # a duration past the calendar (999999999w)
        raise typer.BadParameter(f"{value!r} reaches back before year 1", param_hint=hint) from None


def finite_seconds(value: float | None) -> float | None:
    """Option callback: a number of seconds must be finite (``inf``/``nan`` parse as floats)."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number of seconds")
    return value
