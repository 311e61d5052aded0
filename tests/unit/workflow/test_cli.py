"""`switchyard workflow` commands, run in-process with Typer's runner on temporary files."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

from typer.testing import CliRunner

from services.commands.workflow import app
from services.workflow import KeyEntry, Keyring, SignedDefinition, definition_schema_text, verify_signed

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "examples" / "linear-chain.yaml"
BAD = ROOT / "tests" / "unit" / "workflow" / "bad_definitions"
runner = CliRunner()


def test_validate_ok_lines() -> None:
    result = runner.invoke(
        app, ["validate", str(EXAMPLE), str(ROOT / "deploy/examples/client-onboarding.yaml")]
    )
    assert result.exit_code == 0, result.output
    assert "OK linear-chain v1" in result.stdout
    assert "OK client-onboarding v1" in result.stdout


def test_validate_reports_every_problem_and_exits_1() -> None:
    result = runner.invoke(
        app, ["validate", str(EXAMPLE), str(BAD / "many-problems.yaml"), str(BAD / "cycle.yaml")]
    )
    assert result.exit_code == 1
    assert "OK linear-chain v1" in result.stdout
    assert result.stderr.count("✗") == 7
    assert "needs form a cycle: a -> b -> c -> a" in result.stderr


def test_validate_action_options(tmp_path: Path) -> None:
    path = tmp_path / "custom.yaml"
    path.write_text("name: c\nversion: 1\ntrigger: {event: e}\nsteps:\n  - {id: a, action: acme.custom}\n")
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 1
    assert runner.invoke(app, ["validate", str(path), "--action", "acme.custom"]).exit_code == 0
    assert runner.invoke(app, ["validate", str(path), "--any-action"]).exit_code == 0


def test_keygen_sign_and_verify(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["keygen", "--out-dir", str(keys), "--key-id", "acme-2025"])
    assert result.exit_code == 0, result.output
    private = keys / "acme-2025.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    public = (keys / "acme-2025.pub").read_text().strip()
    assert f"public_key: {public}" in result.stdout and "key_id: acme-2025" in result.stdout
    again = runner.invoke(app, ["keygen", "--out-dir", str(keys), "--key-id", "acme-2025"])
    assert again.exit_code == 1 and "already exists" in again.stderr

    out = tmp_path / "signed.json"
    args = ["sign", str(EXAMPLE), "--key", str(private), "--key-id", "acme-2025", "--tenant", "acme"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    signed = SignedDefinition.model_validate_json(out.read_text())
    keyring = Keyring(tenant="acme", keys=[KeyEntry(key_id="acme-2025", public_key=public)])
    verify_signed(signed, "acme", keyring, None, dt.datetime.now(dt.UTC))

    to_stdout = runner.invoke(app, args)
    assert json.loads(to_stdout.stdout)["signature"] == signed.signature  # Ed25519 is deterministic


def test_sign_refuses_invalid_definitions_and_bad_keys(tmp_path: Path) -> None:
    key = tmp_path / "bad.key"
    key.write_text("not a key")
    result = runner.invoke(
        app, ["sign", str(EXAMPLE), "--key", str(key), "--key-id", "k", "--tenant", "acme"]
    )
    assert result.exit_code == 1 and "cannot read private key" in result.stderr
    result = runner.invoke(
        app, ["sign", str(BAD / "cycle.yaml"), "--key", str(key), "--key-id", "k", "--tenant", "a"]
    )
    assert result.exit_code == 1 and "cycle" in result.stderr


def test_schema_print_write_and_check(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0 and result.stdout == definition_schema_text()
    target = tmp_path / "schema.json"
    assert runner.invoke(app, ["schema", "--out", str(target), "--check"]).exit_code == 1
    assert runner.invoke(app, ["schema", "--out", str(target)]).exit_code == 0
    assert runner.invoke(app, ["schema", "--out", str(target), "--check"]).exit_code == 0


def test_every_command_has_help() -> None:
    for command in ["validate", "keygen", "sign", "schema"]:
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and len(result.stdout) > 200
