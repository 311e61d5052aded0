"""The values of a step's or an attempt's :class:`RowChange`, typed as their table's.

``RowChange.values`` is either table's columns (``StepValues | AttemptValues``): which one a change
holds is known from the function that made it (:func:`step_change`, :func:`attempt_change`), not
from its type, so a test reading a column only one table has says which table it reads.
"""

from __future__ import annotations

from typing import cast

from services.projector.changes import AttemptValues, RowChange, StepValues


def step_values(change: RowChange) -> StepValues:
    """``change.values`` of a :func:`~services.projector.changes.step_change`."""
    return cast(StepValues, change.values)


def attempt_values(change: RowChange) -> AttemptValues:
    """``change.values`` of an :func:`~services.projector.changes.attempt_change`."""
    return cast(AttemptValues, change.values)
