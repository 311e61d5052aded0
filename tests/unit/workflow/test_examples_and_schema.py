"""The shipped examples validate, compile, sign and verify; the committed JSON Schema is current."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.workflow import (
    BUILTIN_ACTIONS,
    EvalContext,
    KeyEntry,
    Keyring,
    StepStatus,
    compile_workflow,
    definition_schema,
    definition_schema_text,
    load_definition_file,
    sign_definition,
    verify_signed,
)
from services.workflow.schema_export import SCHEMA_PATH
from services.workflow.signing import public_key_b64

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "deploy" / "examples").glob("*.yaml"))


def test_expected_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "linear-chain.yaml",
        "fan-out-fan-in.yaml",
        "conditional-branch.yaml",
        "client-onboarding.yaml",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates_compiles_signs_and_verifies(path: Path) -> None:
    defn = load_definition_file(path, known_actions=BUILTIN_ACTIONS)
    compile_workflow(defn, BUILTIN_ACTIONS)
    key = Ed25519PrivateKey.generate()
    signed = sign_definition(defn, tenant="acme", key_id="k1", private_key=key)
    keyring = Keyring(tenant="acme", keys=[KeyEntry(key_id="k1", public_key=public_key_b64(key))])
    verify_signed(signed, "acme", keyring, {}, dt.datetime.now(dt.UTC))


def test_client_onboarding_runs_end_to_end_in_simulation() -> None:
    wf = compile_workflow(
        load_definition_file(ROOT / "deploy/examples/client-onboarding.yaml"), BUILTIN_ACTIONS
    )
    trigger = {
        "event": "crm.engagement_signed",
        "tenant": "acme",
        "key": "eng-42",
        "data": {
            "status": "signed",
            "engagement_id": "ENG-42",
            "partner": "p.jones@firm.example",
            "client": {"name": "Initech", "email": "cfo@initech.example"},
        },
    }
    assert wf.matches(trigger)
    outputs: dict[str, object] = {}
    statuses: dict[str, StepStatus] = {}
    started: list[str] = []
    while True:
        ctx = EvalContext(trigger, outputs)
        adv = wf.advance(statuses, ctx)
        if adv.outcome:
            break
        for sid in adv.start:
            inputs = wf.render_inputs(sid, ctx)
            started.append(sid)
            statuses[sid] = StepStatus.SUCCEEDED
            outputs[sid] = {
                "id": "C-1",
                **inputs.get("fields", {}),
                "path": inputs.get("fields", {}).get("path"),
            }
    assert adv.outcome == "succeeded"
    assert started == ["create_client", "open_folder", "send_welcome", "schedule_kickoff", "mark_onboarded"]
    assert wf.definition.scopes == ["firm_data:write", "email:send"]


def test_committed_schema_is_in_sync() -> None:
    assert SCHEMA_PATH == ROOT / "schemas" / "workflow-definition.schema.json"
    assert SCHEMA_PATH.read_text() == definition_schema_text(), (
        "schema out of date: run `switchyard workflow schema --out schemas/workflow-definition.schema.json`"
    )


def test_schema_describes_the_document() -> None:
    schema = definition_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "version", "trigger", "steps"}
    assert schema["properties"]["steps"]["maxItems"] == 200
    assert json.loads(definition_schema_text()) == schema
