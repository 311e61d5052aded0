"""The operator-key parts of the CLI, with the registry and Kafka faked: `tenant create|update
--operator-key`, replay/cancel refusing to send without a key, and approve signing its decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from services.commands import control as control_cmd
from services.commands import tenant as tenant_cmd
from services.config import Settings
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry, Keyring, generate_keypair

SIGNING = KeyEntry(key_id="acme-1", public_key=generate_keypair()[1])


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[TenantConfig]:
    stored = {"acme": TenantConfig(tenant="acme", keyring=Keyring(tenant="acme", keys=[SIGNING]))}
    writes: list[TenantConfig] = []
    settings = Settings(kafka_bootstrap_servers="unused:9092")
    monkeypatch.setattr(tenant_cmd, "kafka_settings", lambda: settings)
    monkeypatch.setattr(tenant_cmd, "read_tenants", lambda _settings: dict(stored))
    monkeypatch.setattr(tenant_cmd, "save_tenant", lambda _settings, config: writes.append(config))
    monkeypatch.setattr(tenant_cmd, "create_trigger_topic", lambda _settings, _config: True)
    monkeypatch.setattr(tenant_cmd, "admin_client", lambda _settings: None)
    monkeypatch.setattr(tenant_cmd, "ensure_tenant_acls", lambda *_args: [])
    return writes


def public_file(tmp_path: Path, name: str) -> tuple[Path, str]:
    public = generate_keypair()[1]
    path = tmp_path / f"{name}.pub"
    path.write_text(public + "\n")
    return path, public


def test_update_adds_and_replaces_operator_keys_and_keeps_signing_keys(
    saved: list[TenantConfig], tmp_path: Path
) -> None:
    alice, alice_public = public_file(tmp_path, "alice")
    result = CliRunner().invoke(tenant_cmd.app, ["update", "acme", "--operator-key", f"alice@acme={alice}"])
    assert result.exit_code == 0, result.output
    keys = saved[-1].keyring_or_empty().keys
    assert [(k.key_id, k.role, k.public_key) for k in keys] == [
        ("acme-1", "signing", SIGNING.public_key),
        ("alice@acme", "operator", alice_public),
    ]


def test_create_registers_operator_keys(saved: list[TenantConfig], tmp_path: Path) -> None:
    bob, _ = public_file(tmp_path, "bob")
    result = CliRunner().invoke(tenant_cmd.app, ["create", "beta", "--operator-key", f"bob@beta={bob}"])
    assert result.exit_code == 0, result.output
    [entry] = saved[-1].keyring_or_empty().keys
    assert (entry.key_id, entry.role) == ("bob@beta", "operator")


@pytest.mark.parametrize("spec", ["no-equals-sign", "bad id!=x.pub", "alice=missing.pub"])
def test_a_bad_operator_key_option_is_refused(saved: list[TenantConfig], spec: str) -> None:
    result = CliRunner().invoke(tenant_cmd.app, ["update", "acme", "--operator-key", spec])
    assert result.exit_code == 2
    assert "--operator-key" in result.output and saved == []


def test_replay_and_cancel_refuse_to_send_unsigned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        control_cmd, "kafka_settings", lambda: Settings(kafka_bootstrap_servers="unused:9092")
    )
    app = typer.Typer()
    app.command()(control_cmd.cancel)
    result = CliRunner().invoke(app, ["run-1", "--reason", "x", "--tenant", "acme"])
    assert result.exit_code == 2
    assert "no operator key" in result.output and "switchyard operator keygen" in result.output


def test_approve_sends_a_signed_decision_with_its_comment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from services.control.signing import signature_matches
    from tests.fixtures.operators import PRIVATE, write_key

    sent: list[Any] = []

    class Sender:
        def __init__(self, _settings: Settings) -> None: ...

        def send(self, cmd: Any) -> None:
            sent.append(cmd)

        def flush(self) -> None: ...

    monkeypatch.setattr(
        control_cmd, "kafka_settings", lambda: Settings(kafka_bootstrap_servers="unused:9092")
    )
    monkeypatch.setattr(control_cmd, "ControlSender", Sender)
    app = typer.Typer()
    app.command()(control_cmd.approve)
    key = write_key(tmp_path, "alice@acme")
    args = ["run-1", "ask", "--decision", "reject", "--comment", "wrong client", "--tenant", "acme"]
    result = CliRunner().invoke(app, [*args, "--key", str(key), "--wait", "0"])
    assert result.exit_code == 0, result.output
    [cmd] = sent
    assert (cmd["kind"], cmd["step_id"], cmd["decision"], cmd["comment"]) == (
        "approve",
        "ask",
        "reject",
        "wrong client",
    )
    assert cmd["reason"] == "reject: wrong client" and cmd["requester"] == "alice@acme"
    assert signature_matches(cmd, PRIVATE.public_key())

    bad = CliRunner().invoke(
        app, ["run-1", "ask", "--decision", "maybe", "--comment", "x", "--key", str(key)]
    )
    assert bad.exit_code == 2 and "maybe" in bad.output
