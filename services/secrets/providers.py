"""Secret providers: where a tenant's secrets come from (the plugin interface and the built-ins).

A provider is any object with ``name`` and ``async def lookup(self, tenant, name) -> str | None``
(``None``: this provider does not have it). :class:`SecretResolver` asks the configured providers
in order (``SWITCHYARD_SECRET_PROVIDERS``, default ``env,file``); the first value found wins.

Built in:

* ``env`` — the process environment: ``SWITCHYARD_SECRET_<tenant>_<NAME>``, the tenant spelled
  as it is (``SWITCHYARD_SECRET_acme_API_TOKEN``). Tenant names are lowercase and secret names
  start with an uppercase letter, so no two (tenant, name) pairs share a variable;
* ``file`` — a directory per tenant under ``SWITCHYARD_SECRETS_DIR``: the file
  ``<dir>/<tenant>/<NAME>`` holds the value (one trailing newline is dropped), the layout of a
  mounted Kubernetes secret. Off while the setting is unset.

Plugins register a factory under the entry-point group ``switchyard.secret_providers``::

    [project.entry-points."switchyard.secret_providers"]
    vault = "firm_secrets:VaultProvider"

The entry point names a callable taking the :class:`~services.config.Settings` (a class whose
``__init__`` takes them, or a function) and returning the provider; list its name in
``SWITCHYARD_SECRET_PROVIDERS`` to use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from services.secrets.references import NAME

if TYPE_CHECKING:
    from services.config import Settings

ENTRY_POINT_GROUP = "switchyard.secret_providers"
ENV_PREFIX = "SWITCHYARD_SECRET_"
# Same rule as services.tenancy.config.TENANT_PATTERN: checked again here because a tenant name
# becomes part of a path and of a variable name.
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class SecretMissing(Exception):
    """No provider has one or more referenced secrets (error kind ``secret_missing``)."""

    def __init__(self, tenant: str, names: Iterable[str]) -> None:
        self.tenant, self.names = tenant, tuple(sorted(names))
        super().__init__(
            f"secret(s) {', '.join(self.names)} not found for tenant {tenant!r} by any secret provider"
        )


class SecretProviderError(Exception):
    """A provider failed to answer (error kind ``secret_unavailable``, retryable)."""


class ProviderLoadError(RuntimeError):
    """A configured provider cannot be found or built; the message says which and why."""


@runtime_checkable
class SecretProvider(Protocol):
    """What the executor needs of a secret provider (see the module docstring)."""

    @property
    def name(self) -> str: ...

    async def lookup(self, tenant: str, name: str, /) -> str | None: ...


def _checked(tenant: str, name: str) -> bool:
    return _TENANT.fullmatch(tenant) is not None and NAME.fullmatch(name) is not None


class EnvProvider:
    """Secrets from environment variables ``SWITCHYARD_SECRET_<tenant>_<NAME>``."""

    name = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    @staticmethod
    def variable(tenant: str, name: str) -> str:
        return f"{ENV_PREFIX}{tenant}_{name}"

    async def lookup(self, tenant: str, name: str, /) -> str | None:
        if not _checked(tenant, name):
            return None
        return self._environ.get(self.variable(tenant, name))


class FileProvider:
    """Secrets from files ``<directory>/<tenant>/<NAME>``."""

    name = "file"

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = None if directory is None else Path(directory)

    async def lookup(self, tenant: str, name: str, /) -> str | None:
        if self.directory is None or not _checked(tenant, name):
            return None
        path = self.directory / tenant / name
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, UnicodeDecodeError) as exc:
            # The path names no value; the reason may (e.g. permissions), not the secret.
            raise SecretProviderError(
                f"secret file of {tenant}/{name} unreadable: {type(exc).__name__}"
            ) from exc
        return text.removesuffix("\n").removesuffix("\r")


ProviderFactory = Callable[["Settings"], SecretProvider]

BUILTIN: dict[str, ProviderFactory] = {
    "env": lambda settings: EnvProvider(),
    "file": lambda settings: FileProvider(settings.secrets_dir),
}


@dataclass(frozen=True)
class SecretResolver:
    """The configured providers, asked in order."""

    providers: tuple[SecretProvider, ...]

    async def lookup_all(self, tenant: str, names: Iterable[str]) -> dict[str, str]:
        """Every value of ``names``; :class:`SecretMissing` naming all that no provider has,
        :class:`SecretProviderError` when a provider fails."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for name in sorted(set(names)):
            value = await self._lookup(tenant, name)
            if value is None:
                missing.append(name)
            else:
                found[name] = value
        if missing:
            raise SecretMissing(tenant, missing)
        return found

    async def _lookup(self, tenant: str, name: str) -> str | None:
        for provider in self.providers:
            try:
                value = await provider.lookup(tenant, name)
            except SecretProviderError:
                raise
            except Exception as exc:
                raise SecretProviderError(
                    f"secret provider {provider.name!r} failed on {name}: {type(exc).__name__}"
                ) from exc
            if value is not None:
                if not isinstance(value, str):
                    raise SecretProviderError(
                        f"secret provider {provider.name!r} returned a {type(value).__name__} for {name}"
                    )
                return value
        return None


def load_resolver(settings: Settings) -> SecretResolver:
    """The resolver ``settings`` configure (built-ins and ``switchyard.secret_providers`` plugins)."""
    plugins = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    providers: list[SecretProvider] = []
    for name in settings.secret_providers:
        factory = BUILTIN.get(name)
        if factory is None:
            ep = plugins.get(name)
            if ep is None:
                known = sorted({*BUILTIN, *plugins})
                raise ProviderLoadError(
                    f"secret provider {name!r} is not installed (known: {', '.join(known)})"
                )
            try:
                factory = ep.load()
            except Exception as exc:
                raise ProviderLoadError(
                    f"secret provider {name!r} ({ep.value}) cannot be imported: {type(exc).__name__}: {exc}"
                ) from exc
        try:
            provider = factory(settings)
        except Exception as exc:
            raise ProviderLoadError(
                f"secret provider {name!r} failed to start: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(provider, SecretProvider):
            raise ProviderLoadError(f"secret provider {name!r} has no name and async lookup(tenant, name)")
        providers.append(provider)
    return SecretResolver(tuple(providers))
