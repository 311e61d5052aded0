"""Where the launcher keeps downloads (cache), data, logs and its record of what it started (state)."""

from __future__ import annotations

from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    path = Path(platformdirs.user_cache_dir("switchyard"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_dir() -> Path:
    path = Path(platformdirs.user_state_dir("switchyard"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def deploy_file(*parts: str) -> Path:
    path = REPO_ROOT.joinpath("deploy", *parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the launcher runs from a Switchyard source checkout (pip install -e .)"
        )
    return path
