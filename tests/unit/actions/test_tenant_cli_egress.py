"""``switchyard tenant update --egress-allow / --clear-egress-allow`` (the registry is faked)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from services.commands import tenant as tenant_cmd
from services.config import Settings
from services.tenancy.config import TenantConfig


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> list[TenantConfig]:
    stored = {"acme": TenantConfig(tenant="acme", egress_allow=["10.0.0.0/8"])}
    writes: list[TenantConfig] = []
    monkeypatch.setattr(tenant_cmd, "kafka_settings", lambda: Settings(kafka_bootstrap_servers="unused:9092"))
    monkeypatch.setattr(tenant_cmd, "read_tenants", lambda settings: dict(stored))
    monkeypatch.setattr(tenant_cmd, "save_tenant", lambda settings, config: writes.append(config))
    return writes


def test_update_replaces_and_clears_the_allow_list(saved: list[TenantConfig]) -> None:
    runner = CliRunner()
    args = ["update", "acme", "--egress-allow", "127.0.0.1", "--egress-allow", "*.svc.acme"]
    result = runner.invoke(tenant_cmd.app, args)
    assert result.exit_code == 0, result.output
    assert saved[-1].egress_allow == ["127.0.0.1", "*.svc.acme"]
    result = runner.invoke(tenant_cmd.app, ["update", "acme", "--clear-egress-allow"])
    assert result.exit_code == 0, result.output
    assert saved[-1].egress_allow == []


def test_update_refuses_an_entry_that_is_neither_host_nor_cidr(saved: list[TenantConfig]) -> None:
    result = CliRunner().invoke(tenant_cmd.app, ["update", "acme", "--egress-allow", "http://10.0.0.1/"])
    assert result.exit_code == 2
    assert "egress allow entry" in result.output
    assert saved == []
