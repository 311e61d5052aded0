"""Secrets: ``${{ secrets.NAME }}`` references in step inputs, resolved only inside the executor.

* :mod:`.references` — the reference syntax and the wire form the router writes (pure);
* :mod:`.providers` — the per-tenant provider plugin interface, the ``env`` and ``file``
  built-ins, and the resolver the executor asks;
* :mod:`.masking` — resolved values kept out of results and log lines.
"""

from services.secrets.providers import (
    SecretMissing,
    SecretProvider,
    SecretProviderError,
    SecretResolver,
    load_resolver,
)

__all__ = ["SecretMissing", "SecretProvider", "SecretProviderError", "SecretResolver", "load_resolver"]
