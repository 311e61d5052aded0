"""Operator-key settings from the developer's environment must not leak into these tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _no_operator_key_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SWITCHYARD_OPERATOR_KEY_FILE", "SWITCHYARD_OPERATOR_KEY_ID", "SWITCHYARD_OPERATOR_KEYS"):
        monkeypatch.delenv(name, raising=False)
