"""Console tokens: random secrets shown once, stored as scrypt hashes (hashlib), checked in
constant time.

A token reads ``sy_<id>_<secret>``: the id finds the stored row, the secret is verified against
its hash, so a leaked database yields no usable token and lookups need no scan.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

# RFC 7914's interactive parameters: ~16 MiB and a few tens of ms per check.
_N, _R, _P, _LEN = 2**14, 8, 1, 32
_TOKEN = re.compile(r"^sy_([a-z0-9]{12})_([A-Za-z0-9_-]{32,64})$")


@dataclass(frozen=True)
class NewToken:
    token_id: str
    secret: str
    hashed: str

    @property
    def token(self) -> str:
        return f"sy_{self.token_id}_{self.secret}"


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    """``scrypt$N$r$p$<salt hex>$<hash hex>`` of ``secret`` with a fresh (or given) salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_LEN)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_secret(secret: str, hashed: str) -> bool:
    """Whether ``secret`` matches ``hashed`` (any stored parameters; False for a malformed hash)."""
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        expected = bytes.fromhex(digest)
        actual = hashlib.scrypt(
            secret.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


def new_token() -> NewToken:
    token_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))
    secret = secrets.token_urlsafe(32)
    return NewToken(token_id, secret, hash_secret(secret))


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.match(token.strip())
    return (match.group(1), match.group(2)) if match else None
