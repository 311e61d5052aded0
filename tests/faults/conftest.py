"""Fixtures of the fault-injection suite: settings on a unique topic prefix, a fresh database."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.config import Settings
from tests.fixtures.engine import make_settings


@pytest.fixture
def fault_settings(kafka_bootstrap: str, unique: str) -> Settings:
    """Settings for one scenario on the shared broker: its own topic prefix, 4 internal partitions."""
    return make_settings(kafka_bootstrap, f"f{unique}")


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """Where the engine processes of a scenario write their logs (kept by pytest for a few runs)."""
    path = tmp_path / "logs"
    path.mkdir()
    return path


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault-injection scenarios (tests/faults; SWITCHYARD_FAULTS_LONG=1: long mode)"
    )
