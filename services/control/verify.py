"""Who sent an operator command: intake's check of its signature, key and age. Pure: no I/O.

A command is accepted only when it is signed (``key_id`` + ``signature``) by

* an ``operator``-role key of the command's tenant's keyring, valid now (``not_before``,
  ``not_after``, ``revoked_at``): the requester recorded is the key id; or
* a global operator key (``SWITCHYARD_OPERATOR_KEYS``): the requester is the key id, or the
  ``on_behalf_of`` name the key vouches for (the console signs as a gateway for its logged-in
  operator);

and it was issued within ``window_ms`` of now (either side: clocks drift). Everything else is
refused with a :class:`Reason` and a message for people (see :class:`CommandRefused`).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from services.contracts.records import ControlCommand
from services.control.signing import signature_matches
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry


class Reason(enum.StrEnum):
    """Why a control command was refused (the first word of the recorded refusal)."""

    UNSIGNED = "unsigned_command"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    FOREIGN_KEY = "foreign_key"
    NOT_OPERATOR_KEY = "not_operator_key"
    KEY_NOT_VALID = "key_not_valid"
    STALE = "stale_command"
    NOT_A_GATEWAY = "not_a_gateway"


class CommandRefused(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Verified:
    requester: str  # what the audit trail records
    key_id: str
    scope: str  # "tenant" or "global"


def verify_command(
    command: ControlCommand,
    tenant: TenantConfig,
    global_keys: Mapping[str, str],
    now_ms: int,
    window_ms: int,
    foreign_operator_key: Callable[[str], bool] = lambda _key_id: False,
) -> Verified:
    """Accept ``command`` for ``tenant`` or raise :class:`CommandRefused` saying why not.

    ``foreign_operator_key(key_id)`` says whether another tenant has an operator key of that id
    (only to name the refusal precisely)."""
    key_id, signature = command.get("key_id"), command.get("signature")
    what = f"{command.get('kind')} of run {command.get('run_id')}"
    if not key_id or not signature:
        raise CommandRefused(
            Reason.UNSIGNED,
            f"{what} is not signed; operator commands must be signed with an operator key "
            "(`switchyard replay|cancel|approve --key FILE`)",
        )
    entry = tenant.keyring_or_empty().get(key_id)
    public: Ed25519PublicKey
    if entry is not None:
        public = _tenant_key(entry, tenant.tenant, now_ms)
        scope = "tenant"
    elif key_id in global_keys:
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(global_keys[key_id]))
        scope = "global"
    elif foreign_operator_key(key_id):
        raise CommandRefused(
            Reason.FOREIGN_KEY,
            f"key {key_id!r} is an operator key of another tenant, not of tenant {tenant.tenant!r}",
        )
    else:
        raise CommandRefused(
            Reason.UNKNOWN_KEY,
            f"key {key_id!r} is neither an operator key of tenant {tenant.tenant!r} nor a global "
            "operator key (`switchyard tenant update --operator-key`, SWITCHYARD_OPERATOR_KEYS)",
        )
    if not signature_matches(command, public):
        raise CommandRefused(
            Reason.BAD_SIGNATURE, f"the signature of {what} does not match its fields and key {key_id!r}"
        )
    issued_at = command.get("issued_at")
    if not isinstance(issued_at, int) or abs(now_ms - issued_at) > window_ms:
        raise CommandRefused(Reason.STALE, stale_message(issued_at, now_ms, window_ms))
    on_behalf_of = command.get("on_behalf_of")
    if on_behalf_of and scope != "global":
        raise CommandRefused(
            Reason.NOT_A_GATEWAY,
            f"key {key_id!r} is a tenant operator key; only global operator keys may act on behalf of "
            f"another operator ({on_behalf_of!r})",
        )
    return Verified(on_behalf_of or key_id, key_id, scope)


def stale_message(issued_at: object, now_ms: int, window_ms: int) -> str:
    if not isinstance(issued_at, int):
        return "the command has no issue time"
    age_s = (now_ms - issued_at) / 1000
    when = f"{age_s:.0f} s ago" if age_s >= 0 else f"{-age_s:.0f} s in the future"
    return f"the command was issued {when}; commands are accepted within {window_ms / 1000:.0f} s of issue"


def _tenant_key(entry: KeyEntry, tenant: str, now_ms: int) -> Ed25519PublicKey:
    if entry.role != "operator":
        raise CommandRefused(
            Reason.NOT_OPERATOR_KEY,
            f"key {entry.key_id!r} of tenant {tenant!r} signs definitions; it is not an operator key",
        )
    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC)
    problem = None
    if entry.revoked_at is not None and now >= entry.revoked_at:
        problem = f"was revoked at {entry.revoked_at.isoformat()}"
    elif entry.not_before is not None and now < entry.not_before:
        problem = f"is valid from {entry.not_before.isoformat()}"
    elif entry.not_after is not None and now >= entry.not_after:
        problem = f"expired at {entry.not_after.isoformat()}"
    if problem is not None:
        raise CommandRefused(Reason.KEY_NOT_VALID, f"key {entry.key_id!r} {problem}")
    return entry.public()
