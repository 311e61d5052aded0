"""Workflow definitions: models, validation, DAG, expressions, templates and signing. Pure, no I/O
beyond reading the files a caller names (and writing key files on request).

The router and the CLI import from here; the names below are the stable API.
"""

from __future__ import annotations

from services.workflow.actions import BUILTIN_ACTIONS
from services.workflow.compiled import (
    EXPRESSION_ERROR,
    Advance,
    CompiledWorkflow,
    RunOutcome,
    StepFailure,
    StepStatus,
    compile_workflow,
)
from services.workflow.expressions import EvalContext, ExpressionError
from services.workflow.loader import load_definition_file, load_definition_text, parse_document
from services.workflow.models import RetryPolicy, Step, Trigger, WorkflowDefinition
from services.workflow.problems import DefinitionError, Problem
from services.workflow.schema_export import definition_schema, definition_schema_text
from services.workflow.signing import (
    KeyEntry,
    Keyring,
    Reason,
    SignatureError,
    SignedDefinition,
    content_hash,
    generate_keypair,
    sign_definition,
    verify_signed,
)
from services.workflow.validation import validate_definition, validate_definition_data

__all__ = [
    "BUILTIN_ACTIONS",
    "EXPRESSION_ERROR",
    "Advance",
    "CompiledWorkflow",
    "DefinitionError",
    "EvalContext",
    "ExpressionError",
    "KeyEntry",
    "Keyring",
    "Problem",
    "Reason",
    "RetryPolicy",
    "RunOutcome",
    "SignatureError",
    "SignedDefinition",
    "Step",
    "StepFailure",
    "StepStatus",
    "Trigger",
    "WorkflowDefinition",
    "compile_workflow",
    "content_hash",
    "definition_schema",
    "definition_schema_text",
    "generate_keypair",
    "load_definition_file",
    "load_definition_text",
    "parse_document",
    "sign_definition",
    "validate_definition",
    "validate_definition_data",
    "verify_signed",
]
