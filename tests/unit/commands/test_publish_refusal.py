"""`switchyard workflow publish` words a refusal as `refused: <reason>: <why>`, the reason once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.config import get_settings
from services.package_data import examples_dir
from services.registry import publishing
from services.tenancy.config import TenantConfig
from services.workflow.loader import load_definition_file
from services.workflow.signing import (
    KeyEntry,
    Keyring,
    generate_keypair,
    private_key_from_b64,
    sign_definition,
)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_a_version_conflict_names_its_reason_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cli_env: None
) -> None:
    private, public = generate_keypair()
    definition = load_definition_file(examples_dir() / "linear-chain.yaml")
    signed = sign_definition(
        definition, tenant="acme", key_id="k1", private_key=private_key_from_b64(private)
    )
    envelope = tmp_path / "chain.signed.json"
    envelope.write_text(signed.model_dump_json())
    tenant = TenantConfig(
        tenant="acme", keyring=Keyring(tenant="acme", keys=[KeyEntry(key_id="k1", public_key=public)])
    )
    other_content = "0" * 64  # the version is already published with different content

    def published(histories: Any, tenant_id: str, keyring: Any) -> dict[tuple[str, int], str]:
        return {(signed.name, signed.version): other_content}

    monkeypatch.setattr(publishing, "read_tenants", lambda settings: {"acme": tenant})
    monkeypatch.setattr(publishing, "read_definition_histories", lambda settings: {})
    monkeypatch.setattr(publishing, "published_hashes", published)
    monkeypatch.setattr(publishing, "publish", lambda *args: pytest.fail("a refused version was published"))
    result = CliRunner().invoke(app, ["workflow", "publish", str(envelope)], env={"COLUMNS": "300"})
    assert result.exit_code == 1
    assert (
        "refused: version_conflict: linear-chain v1 is already published with different content"
        in result.output
    )
    assert result.output.count("version_conflict") == 1
