"""Closes the transactional loops the fake-client tests made (each runs a hang-guard thread)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.bus.txloop_fakes import OPEN


@pytest.fixture(autouse=True)
def _close_loops() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()
