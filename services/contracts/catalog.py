"""The schema catalog: current and released Avro schemas, parsed once, with their wire ids.

Layout (``schemas/avro/``, found by :func:`services.package_data.schemas_dir`): ``<Name>.avsc``
is the current schema; ``released/<Name>.v<N>.avsc`` keeps every released version; ``ids.json``
gives each released version its id in the Confluent wire framing (used when no Schema Registry is
configured). The current schema must equal its newest released version, so a schema cannot
change without being released (tests check this and that every released version stays readable
by the current one).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro

from services.package_data import schemas_dir

SCHEMA_DIR = schemas_dir() / "avro"
_RELEASED = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>\d+)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    schema_id: int
    raw: dict[str, Any]
    parsed: Any


@dataclass(frozen=True)
class Catalog:
    current: dict[str, SchemaVersion]  # name -> newest released version (== <Name>.avsc)
    by_id: dict[int, SchemaVersion]
    released: dict[str, list[SchemaVersion]]


def _parse(raw: dict[str, Any]) -> Any:
    return fastavro.parse_schema(raw, named_schemas={})


@lru_cache(maxsize=1)
def catalog(schema_dir: Path = SCHEMA_DIR) -> Catalog:
    ids: dict[str, int] = json.loads((schema_dir / "ids.json").read_text())["ids"]
    released: dict[str, list[SchemaVersion]] = {}
    by_id: dict[int, SchemaVersion] = {}
    for path in sorted((schema_dir / "released").glob("*.avsc")):
        match = _RELEASED.match(path.name)
        if not match:
            raise ValueError(f"{path}: released schemas are named <Name>.v<N>.avsc")
        key = f"{match['name']}.v{match['version']}"
        if key not in ids:
            raise ValueError(f"{path}: no id for {key} in ids.json; give it a new, never used id")
        raw = json.loads(path.read_text())
        version = SchemaVersion(match["name"], int(match["version"]), ids[key], raw, _parse(raw))
        released.setdefault(version.name, []).append(version)
        by_id[version.schema_id] = version
    current: dict[str, SchemaVersion] = {}
    for path in sorted(schema_dir.glob("*.avsc")):
        name = path.stem
        versions = sorted(released.get(name, []), key=lambda v: v.version)
        if not versions:
            raise ValueError(f"{path}: never released; copy it to released/{name}.v1.avsc and add an id")
        current[name] = versions[-1]
        released[name] = versions
    return Catalog(current=current, by_id=by_id, released=released)


def current_schema_text(name: str, schema_dir: Path = SCHEMA_DIR) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((schema_dir / f"{name}.avsc").read_text())
    return result
