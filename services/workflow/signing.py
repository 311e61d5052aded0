"""Signing and verifying definitions: Ed25519 over RFC 8785 canonical JSON, per-tenant keyrings.

The signed message is the RFC 8785 (JCS) canonical JSON of::

    {"definition": <definition.model_dump(mode="json")>, "key_id": ..., "name": ..., "tenant": ...,
     "version": ...}

so a signature binds the exact definition (with defaults filled in) to one tenant and one key.
The envelope (:class:`SignedDefinition`, published to ``wf.definitions`` and written by
``switchyard workflow sign``) is JSON::

    {"tenant": "acme", "key_id": "acme-2024", "signature": "<base64 Ed25519 signature, 64 bytes>",
     "content_hash": "<sha256 hex of the canonical JSON of the definition alone>",
     "definition": {...the definition...}}

Keys are raw 32-byte Ed25519 keys, base64 encoded (private: the seed; public: the point).
:func:`verify_signed` refuses with a :class:`SignatureError` whose ``reason`` is one of
:class:`Reason`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Literal

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from services.workflow.models import WorkflowDefinition

if TYPE_CHECKING:
    from services.contracts.records import JsonObject

KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
TenantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class Reason(enum.StrEnum):
    """Why a signed definition was refused."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    TAMPERED = "tampered"
    UNKNOWN_KEY = "unknown_key"
    KEY_NOT_YET_VALID = "key_not_yet_valid"
    KEY_EXPIRED = "key_expired"
    KEY_REVOKED = "key_revoked"
    TENANT_MISMATCH = "tenant_mismatch"
    VERSION_CONFLICT = "version_conflict"
    VERSION_REGRESSION = "version_regression"


class SignatureError(Exception):
    """A signed definition is not acceptable; ``reason`` is machine-readable, ``message`` is for people."""

    def __init__(self, reason: Reason, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(f"{reason.value}: {message}")


def _b64decode(value: str) -> bytes:
    return base64.b64decode(value.encode("ascii"), validate=True)


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def canonical_definition(defn: WorkflowDefinition) -> bytes:
    """RFC 8785 canonical JSON of the definition alone."""
    return rfc8785.dumps(defn.model_dump(mode="json"))


def content_hash(defn: WorkflowDefinition) -> str:
    """SHA-256 (hex) of :func:`canonical_definition`: identifies a definition's content."""
    return hashlib.sha256(canonical_definition(defn)).hexdigest()


def signing_payload(defn: WorkflowDefinition, tenant: str, key_id: str) -> bytes:
    """The exact bytes that are signed (see the module docstring)."""
    message: JsonObject = {
        "definition": defn.model_dump(mode="json"),
        "tenant": tenant,
        "name": defn.name,
        "version": defn.version,
        "key_id": key_id,
    }
    return rfc8785.dumps(message)


class SignedDefinition(BaseModel):
    """The signed envelope of one definition version for one tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: TenantId
    definition: WorkflowDefinition
    key_id: KeyId
    signature: str = Field(description="Base64 Ed25519 signature of the signing payload; empty = unsigned.")
    content_hash: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def version(self) -> int:
        return self.definition.version


class KeyEntry(BaseModel):
    """One public key of a tenant's keyring, with its validity window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: KeyId
    public_key: str = Field(description="Base64 of the raw 32-byte Ed25519 public key.")
    role: Literal["signing", "operator"] = Field(
        "signing",
        description="signing: signs workflow definitions; operator: signs control commands (replay, cancel).",
    )
    not_before: AwareDatetime | None = None
    not_after: AwareDatetime | None = None
    revoked_at: AwareDatetime | None = None

    @field_validator("public_key")
    @classmethod
    def _is_ed25519(cls, value: str) -> str:
        try:
            raw = _b64decode(value)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("public_key is not valid base64") from exc
        if len(raw) != 32:
            raise ValueError(f"public_key must be 32 raw bytes, got {len(raw)}")
        return value

    def public(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(_b64decode(self.public_key))


class Keyring(BaseModel):
    """The keys a tenant signs definitions with. Rotation = add a key, later set ``not_after``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: TenantId
    keys: list[KeyEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ids(self) -> Keyring:
        ids = [k.key_id for k in self.keys]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate key ids in keyring: {', '.join(dupes)}")
        return self

    def get(self, key_id: str) -> KeyEntry | None:
        return next((k for k in self.keys if k.key_id == key_id), None)


# --- keys ----------------------------------------------------------------------------------------


def generate_keypair() -> tuple[str, str]:
    """A fresh Ed25519 key pair as ``(private_b64, public_b64)`` (raw 32-byte encodings)."""
    private = Ed25519PrivateKey.generate()
    return private_key_to_b64(private), public_key_b64(private)


def private_key_to_b64(private: Ed25519PrivateKey) -> str:
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return _b64encode(raw)


def public_key_b64(private: Ed25519PrivateKey) -> str:
    """Base64 of the raw public key belonging to ``private``."""
    return _b64encode(
        private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def private_key_from_b64(text: str) -> Ed25519PrivateKey:
    """Parse a base64 raw 32-byte private key (as written by ``switchyard workflow keygen``)."""
    try:
        raw = _b64decode(text.strip())
    except (binascii.Error, ValueError) as exc:
        raise ValueError("private key is not valid base64") from exc
    if len(raw) != 32:
        raise ValueError(f"private key must be 32 raw bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


# --- sign / verify -------------------------------------------------------------------------------


def sign_definition(
    defn: WorkflowDefinition, *, tenant: str, key_id: str, private_key: Ed25519PrivateKey
) -> SignedDefinition:
    """Sign ``defn`` for ``tenant`` with ``private_key`` registered as ``key_id``."""
    signature = private_key.sign(signing_payload(defn, tenant, key_id))
    return SignedDefinition(
        tenant=tenant,
        definition=defn,
        key_id=key_id,
        signature=_b64encode(signature),
        content_hash=content_hash(defn),
    )


def _check_key(entry: KeyEntry, now: dt.datetime) -> None:
    if entry.revoked_at is not None and now >= entry.revoked_at:
        raise SignatureError(
            Reason.KEY_REVOKED, f"key {entry.key_id!r} was revoked at {entry.revoked_at.isoformat()}"
        )
    if entry.not_before is not None and now < entry.not_before:
        raise SignatureError(
            Reason.KEY_NOT_YET_VALID, f"key {entry.key_id!r} is valid from {entry.not_before.isoformat()}"
        )
    if entry.not_after is not None and now >= entry.not_after:
        raise SignatureError(
            Reason.KEY_EXPIRED, f"key {entry.key_id!r} expired at {entry.not_after.isoformat()}"
        )


def _check_version(signed: SignedDefinition, published: Mapping[tuple[str, int], str], digest: str) -> None:
    name, version = signed.name, signed.version
    existing = published.get((name, version))
    if existing is not None:
        if existing != digest:
            raise SignatureError(
                Reason.VERSION_CONFLICT,
                f"{name} v{version} is already published with different content; versions are immutable, "
                "publish a new version",
            )
        return
    latest = max((v for (n, v) in published if n == name), default=None)
    if latest is not None and version < latest:
        raise SignatureError(
            Reason.VERSION_REGRESSION,
            f"{name} v{version} is lower than the latest published version v{latest}; "
            f"publish v{latest + 1} or later",
        )


def verify_signed(
    signed: SignedDefinition,
    tenant: str,
    keyring: Keyring,
    published: Mapping[tuple[str, int], str] | None,
    now: dt.datetime,
) -> None:
    """Accept ``signed`` for ``tenant`` or raise :class:`SignatureError` saying why not.

    ``published`` maps ``(name, version)`` to the content hash of each version this tenant has
    already published (``None`` skips the version rules). Republishing identical content is
    accepted (idempotent); different content under a published version, or a new version below
    the latest published one, is refused. ``now`` must be timezone-aware.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if signed.tenant != tenant:
        raise SignatureError(
            Reason.TENANT_MISMATCH, f"definition is signed for tenant {signed.tenant!r}, not {tenant!r}"
        )
    if keyring.tenant != tenant:
        raise SignatureError(
            Reason.TENANT_MISMATCH, f"keyring belongs to tenant {keyring.tenant!r}, not {tenant!r}"
        )
    if not signed.signature:
        raise SignatureError(Reason.UNSIGNED, f"{signed.name} v{signed.version} has no signature")
    entry = keyring.get(signed.key_id)
    if entry is None or entry.role != "signing":
        raise SignatureError(
            Reason.UNKNOWN_KEY, f"key {signed.key_id!r} is not in tenant {tenant!r}'s keyring"
        )
    _check_key(entry, now)
    try:
        signature = _b64decode(signed.signature)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(Reason.MALFORMED, "signature is not valid base64") from exc
    if len(signature) != 64:
        raise SignatureError(Reason.MALFORMED, f"signature must be 64 bytes, got {len(signature)}")
    digest = content_hash(signed.definition)
    if digest != signed.content_hash:
        raise SignatureError(Reason.TAMPERED, "content_hash does not match the definition")
    try:
        entry.public().verify(signature, signing_payload(signed.definition, tenant, signed.key_id))
    except InvalidSignature as exc:
        raise SignatureError(
            Reason.TAMPERED, f"signature does not match the definition, tenant and key {signed.key_id!r}"
        ) from exc
    if published is not None:
        _check_version(signed, published, digest)
