"""Secret providers: the environment and file built-ins, the resolver, plugins (no real I/O but a
temporary directory for the file provider)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from services.config import Settings
from services.secrets.providers import (
    EnvProvider,
    FileProvider,
    ProviderLoadError,
    SecretMissing,
    SecretProviderError,
    SecretResolver,
    load_resolver,
)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_env_variables_are_per_tenant_and_unambiguous() -> None:
    env = EnvProvider(
        {
            "SWITCHYARD_SECRET_acme_API_TOKEN": "a",
            "SWITCHYARD_SECRET_acme_x_Y": "b",
            "SWITCHYARD_SECRET_acme_X_Y": "c",
        }
    )
    assert run(env.lookup("acme", "API_TOKEN")) == "a"
    assert run(env.lookup("other", "API_TOKEN")) is None
    # tenant "acme_x" secret Y and tenant "acme" secret X_Y are different variables
    assert run(env.lookup("acme_x", "Y")) == "b"
    assert run(env.lookup("acme", "X_Y")) == "c"
    assert run(env.lookup("ACME", "API_TOKEN")) is None  # not a tenant name: never looked up


def test_file_provider_reads_one_file_per_secret_of_a_tenant_directory(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "API_TOKEN").write_text("tok\n")
    files = FileProvider(tmp_path)
    assert run(files.lookup("acme", "API_TOKEN")) == "tok"
    assert run(files.lookup("acme", "OTHER")) is None
    assert run(files.lookup("globex", "API_TOKEN")) is None
    assert run(files.lookup("..", "API_TOKEN")) is None  # never a path outside the directory
    assert run(FileProvider(None).lookup("acme", "API_TOKEN")) is None
    (tmp_path / "acme" / "DIR").mkdir()
    with pytest.raises(SecretProviderError, match="unreadable") as info:
        run(files.lookup("acme", "DIR"))
    assert "tok" not in str(info.value)


class Failing:
    name = "failing"

    async def lookup(self, tenant: str, name: str, /) -> str | None:
        raise RuntimeError("backend down: token=abc")


def test_resolver_asks_in_order_names_every_missing_secret_and_wraps_failures() -> None:
    first = EnvProvider({"SWITCHYARD_SECRET_acme_A": "from-env"})
    second = EnvProvider({"SWITCHYARD_SECRET_acme_A": "shadowed", "SWITCHYARD_SECRET_acme_B": "b"})
    resolver = SecretResolver((first, second))
    assert run(resolver.lookup_all("acme", ["A", "B"])) == {"A": "from-env", "B": "b"}
    with pytest.raises(SecretMissing) as missing:
        run(resolver.lookup_all("acme", ["C", "A", "D"]))
    assert missing.value.names == ("C", "D")
    with pytest.raises(SecretProviderError, match=r"failing.*RuntimeError") as failed:
        run(SecretResolver((Failing(),)).lookup_all("acme", ["A"]))
    assert "abc" not in str(failed.value)  # the provider's message may hold anything: not repeated


def test_settings_choose_the_providers_and_plugins_come_from_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolver = load_resolver(Settings(secret_providers=["file", "env"], secrets_dir=str(tmp_path)))
    assert [p.name for p in resolver.providers] == ["file", "env"]

    class EntryPoint:
        name, value = "vault", "firm:Vault"

        def load(self) -> Any:
            return lambda settings: Failing()

    monkeypatch.setattr("services.secrets.providers.metadata.entry_points", lambda group: [EntryPoint()])
    assert [p.name for p in load_resolver(Settings(secret_providers=["vault"])).providers] == ["failing"]
    with pytest.raises(ProviderLoadError, match=r"'nope' is not installed.*env, file, vault"):
        load_resolver(Settings(secret_providers=["nope"]))
