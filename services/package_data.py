"""Where the files that ship with Switchyard are: Avro and JSON schemas, example workflows.

Installed from a wheel they are package data of ``services`` under ``_data/`` (``setup.py``'s
build step copies the repository's top-level ``schemas/`` and ``deploy/examples/`` there); in a
source checkout (``pip install -e .``) that directory does not exist and the repository's own
directories are used, so the committed files stay the single copy. Both are found through
:mod:`importlib.resources`, never relative to the working directory.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# name under services/_data -> the directory it is copied from, relative to the repository root
BUNDLED: dict[str, tuple[str, ...]] = {"schemas": ("schemas",), "examples": ("deploy", "examples")}


def _package_root() -> Path:
    root = resources.files("services")
    if not isinstance(root, Path):  # a zip import: the CLI and alembic need real files
        raise RuntimeError(f"Switchyard must be installed unzipped, not imported from {root}")
    return root


def data_dir(name: str) -> Path:
    """The directory of the shipped data ``name`` (a key of :data:`BUNDLED`)."""
    if name not in BUNDLED:
        raise KeyError(f"no shipped data named {name!r}; known: {sorted(BUNDLED)}")
    package = _package_root()
    bundled = package / "_data" / name
    if bundled.is_dir():
        return bundled
    source = package.parent.joinpath(*BUNDLED[name])
    if not source.is_dir():
        raise FileNotFoundError(
            f"neither {bundled} (an installed wheel) nor {source} (a source checkout) exists; "
            "reinstall Switchyard"
        )
    return source


def schemas_dir() -> Path:
    """``schemas/``: ``avro/`` (current, released, ids.json) and the workflow definition schema."""
    return data_dir("schemas")


def examples_dir() -> Path:
    """``deploy/examples/``: the example workflows and the demo's triggers."""
    return data_dir("examples")
