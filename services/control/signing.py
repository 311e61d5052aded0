"""The signature of an operator command: Ed25519 over RFC 8785 canonical JSON of its signed fields.

The signed message is the canonical JSON of::

    {"purpose": "switchyard.control.v1", "command_id": ..., "kind": ..., "tenant": ..., "run_id": ...,
     "step_id": ..., "reason": ..., "issued_at": <ms>, "key_id": ..., "on_behalf_of": ...}

plus ``"decision"`` and ``"comment"`` when the command has them (an approval decision: these
fields came later, so a command without them signs exactly what it signed before).

``purpose`` separates these signatures from definition signatures (same keys' algorithm, other
messages); ``key_id`` and ``on_behalf_of`` are signed so that neither can be swapped in transit.
``requester`` and ``correlation_id`` are not: intake replaces the requester with the verified
identity, and a correlation id only groups commands for tracing. Pure: no I/O.
"""

from __future__ import annotations

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.contracts.records import ControlCommand

PURPOSE = "switchyard.control.v1"
SIGNATURE_BYTES = 64


def signing_payload(command: ControlCommand) -> bytes:
    """The exact bytes signed for ``command``; ``ValueError`` if a field cannot be canonicalised."""
    # Read with get(): a signature is checked on whatever arrived, a field missing or not.
    message: dict[str, str | int | None] = {
        "command_id": command.get("command_id"),
        "kind": command.get("kind"),
        "tenant": command.get("tenant"),
        "run_id": command.get("run_id"),
        "step_id": command.get("step_id"),
        "reason": command.get("reason"),
        "issued_at": command.get("issued_at"),
        "key_id": command.get("key_id"),
        "on_behalf_of": command.get("on_behalf_of"),
        "purpose": PURPOSE,
    }
    # Signed when set: the signatures of commands without them (all before them) stay valid.
    if command.get("decision") is not None:
        message["decision"] = command.get("decision")
    if command.get("comment") is not None:
        message["comment"] = command.get("comment")
    try:
        return rfc8785.dumps(message)
    except Exception as exc:  # lone surrogates, integers past 2**53: not something we signed
        raise ValueError(f"the command cannot be canonicalised: {exc}") from exc


def sign(command: ControlCommand, key_id: str, private_key: Ed25519PrivateKey) -> ControlCommand:
    """A copy of ``command`` signed by ``key_id``; its requester becomes the identity intake will
    record (``on_behalf_of`` when given, else the key id)."""
    signed: ControlCommand = {**command, "key_id": key_id}
    signed["requester"] = signed.get("on_behalf_of") or key_id
    signed["signature"] = private_key.sign(signing_payload(signed))
    return signed


def signature_matches(command: ControlCommand, public_key: Ed25519PublicKey) -> bool:
    signature = command.get("signature")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        public_key.verify(signature, signing_payload(command))
    except (InvalidSignature, ValueError):
        return False
    return True
