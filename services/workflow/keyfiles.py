"""Key files: the one place in :mod:`services.workflow` that writes files (key generation only).

A key pair is two files in a directory: ``<key_id>.key`` (base64 raw private key, mode 0600) and
``<key_id>.pub`` (base64 raw public key). Existing files are never overwritten.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.workflow.signing import generate_keypair, private_key_from_b64


@dataclass(frozen=True, slots=True)
class KeyFiles:
    """Where a generated key pair was written, and its public key."""

    key_id: str
    private_path: Path
    public_path: Path
    public_key: str


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text + "\n")
    os.chmod(path, mode)  # the umask may have narrowed or widened nothing; make it exact


def write_keypair(out_dir: str | Path, key_id: str) -> KeyFiles:
    """Generate an Ed25519 key pair into ``out_dir``; ``FileExistsError`` if either file exists."""
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / f"{key_id}.key"
    public_path = directory / f"{key_id}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another key id or directory")
    private_b64, public_b64 = generate_keypair()
    _write_new(private_path, private_b64, 0o600)
    _write_new(public_path, public_b64, 0o644)
    return KeyFiles(key_id, private_path, public_path, public_b64)


def read_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Load a private key file written by :func:`write_keypair`."""
    return private_key_from_b64(Path(path).read_text(encoding="ascii"))
