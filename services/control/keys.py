"""Operator keys on disk: which private key signs this process's commands.

A key file is what ``switchyard operator keygen`` (or ``workflow keygen``) writes: the base64 raw
Ed25519 private key in ``<key_id>.key``. The key id is the file name without ``.key`` unless
given. The CLI takes ``--key FILE``, else ``SWITCHYARD_OPERATOR_KEY_FILE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.config import Settings
from services.workflow.keyfiles import read_private_key


class NoOperatorKey(Exception):
    """No key is configured, or the configured one cannot be read (the message says which)."""


@dataclass(frozen=True)
class OperatorKey:
    key_id: str
    private_key: Ed25519PrivateKey


def load_operator_key(path: str | Path, key_id: str | None = None) -> OperatorKey:
    file = Path(path)
    try:
        private = read_private_key(file)
    except (OSError, ValueError) as exc:
        raise NoOperatorKey(f"cannot read operator key {file}: {exc}") from exc
    name = key_id or file.name.removesuffix(".key")
    return OperatorKey(name, private)


def configured_key(
    settings: Settings, path: str | Path | None = None, key_id: str | None = None
) -> OperatorKey:
    """``path`` (``--key``), else the settings' default key; :class:`NoOperatorKey` if neither."""
    chosen = path or settings.operator_key_file
    if not chosen:
        raise NoOperatorKey(
            "no operator key: pass --key FILE or set SWITCHYARD_OPERATOR_KEY_FILE "
            "(create one with `switchyard operator keygen`)"
        )
    return load_operator_key(chosen, key_id or (settings.operator_key_id if not path else None))
