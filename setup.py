"""Build hook: ship the repository's top-level schemas and example workflows inside the wheel.

They stay at the top level of the repository (``schemas/``, ``deploy/examples/``); a built wheel
carries copies as package data under ``services/_data/`` where :mod:`services.package_data`
finds them. An editable install reads the repository directly, so nothing is copied then.
Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# name under services/_data -> source directory (keep in sync with services.package_data.BUNDLED)
BUNDLED = {"schemas": ("schemas",), "examples": ("deploy", "examples")}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name, parts in BUNDLED.items():
            target = Path(self.build_lib, "services", "_data", name)
            shutil.copytree(
                ROOT.joinpath(*parts),
                target,
                dirs_exist_ok=True,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            )


setup(cmdclass={"build_py": BuildPyWithData})
