"""The JSON Schema of workflow definitions, generated from the pydantic models.

The committed copy lives at ``schemas/workflow-definition.schema.json``; a unit test keeps it in
sync, and ``switchyard workflow schema --out`` regenerates it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from services.package_data import schemas_dir
from services.workflow.models import WorkflowDefinition

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

SCHEMA_PATH: Path = schemas_dir() / "workflow-definition.schema.json"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def definition_schema() -> JsonObject:
    """The JSON Schema (draft 2020-12) of a workflow definition document."""
    schema = WorkflowDefinition.model_json_schema(mode="validation")
    return {"$schema": SCHEMA_DIALECT, **schema}


def definition_schema_text() -> str:
    """:func:`definition_schema` as stable, pretty JSON text ending in a newline."""
    return json.dumps(definition_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
