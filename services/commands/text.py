"""Stored text on the terminal: rendered literally, never parsed as rich markup or emoji codes.

Run errors, trigger data, requesters, reasons, publishers… come from tenants and remote systems;
a ``[/x]`` in one of them would make rich raise a ``MarkupError`` (and ``[bold]`` restyle the
output). Table cells go through :func:`add_row`; text interpolated into a markup message goes
through :func:`esc`; every console comes from :func:`console`, which leaves ``:name:`` emoji
codes alone (rich would replace them, and there is no escape for them).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def console(*, stderr: bool = False, **options: Any) -> Console:
    """A rich console for command output: markup for our own messages, no emoji replacement."""
    return Console(stderr=stderr, emoji=False, **options)


def plain(value: object, style: str = "") -> Text:
    """``value`` as literal text (no markup, no emoji codes)."""
    return Text(str(value), style=style)


def esc(value: object) -> str:
    """``value`` escaped for interpolation into a rich markup string."""
    return escape(str(value))


def add_row(table: Table, *cells: str | Text | None, style: str | None = None) -> None:
    """``table.add_row`` with every ``str`` cell taken literally."""
    table.add_row(*(plain(c) if isinstance(c, str) else c for c in cells), style=style)
