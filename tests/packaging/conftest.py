"""Fixtures of the packaging tests: one wheel built and installed per session."""

from __future__ import annotations

import pytest

from tests.packaging.wheel import InstalledWheel, build_wheel, install_wheel


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    workdir = tmp_path_factory.mktemp("wheel")
    return install_wheel(build_wheel(workdir), workdir / "venv")
