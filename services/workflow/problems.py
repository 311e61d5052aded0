"""Validation problems: where a definition is wrong (file, JSON path, line) and what to do about it.

Every check in :mod:`services.workflow` reports :class:`Problem` values instead of raising on the
first mistake; :class:`DefinitionError` carries all of them so an author fixes a file in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int


def format_path(parts: Iterable[PathPart]) -> str:
    """Render a location as a JSON path: ``("steps", 2, "needs", 0)`` -> ``steps[2].needs[0]``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "$"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a definition.

    ``path`` is a JSON path into the document (``$`` for the whole document); ``line`` is the
    1-based source line when the loader knows it.
    """

    file: str
    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}"


class DefinitionError(Exception):
    """A workflow definition is invalid; ``problems`` lists every problem found, in document order."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("DefinitionError needs at least one problem")
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in workflow definition"
        return head + ":\n" + "\n".join(f"  - {p}" for p in self.problems)
