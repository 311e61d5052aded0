"""Operator accounts, grants and tokens in the ``console`` schema: creating them (the CLI) and
resolving a presented token to a principal or a tenant (the server)."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from services.console.models import ALL_TENANTS, ROLES, Grant, Operator, Token
from services.console.scope import Principal
from services.console.tokens import NewToken, new_token, parse_token, verify_secret


class AccountError(ValueError):
    """A refused account change, with a message for the operator."""


def add_operator(session: Session, name: str, tenants: list[str], role: str, everywhere: bool) -> NewToken:
    """Create operator ``name`` with ``role`` on ``tenants`` (or on all, ``everywhere``) and a first
    token; the caller commits and shows the token once."""
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if everywhere == bool(tenants):
        raise AccountError("give either --tenant (one or more) or --global")
    if session.get(Operator, name) is not None:
        raise AccountError(f"operator {name!r} exists already")
    session.add(Operator(name=name))
    session.flush()
    for tenant in [ALL_TENANTS] if everywhere else sorted(set(tenants)):
        session.add(Grant(operator=name, tenant=tenant, role=role))
    return add_token(session, "operator", name, label="created with the operator")


def add_token(session: Session, kind: str, subject: str, label: str | None = None) -> NewToken:
    if kind == "operator" and session.get(Operator, subject) is None:
        raise AccountError(f"no operator {subject!r}")
    token = new_token()
    session.add(Token(token_id=token.token_id, kind=kind, subject=subject, hashed=token.hashed, label=label))
    return token


def revoke_token(session: Session, token_id: str) -> None:
    token = session.get(Token, token_id)
    if token is None:
        raise AccountError(f"no token {token_id!r}")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)


def list_operators(session: Session) -> list[tuple[Operator, list[Grant], list[Token]]]:
    out = []
    for op in session.scalars(sa.select(Operator).order_by(Operator.name)):
        grants = list(session.scalars(sa.select(Grant).where(Grant.operator == op.name)))
        tokens = list(
            session.scalars(sa.select(Token).where(Token.kind == "operator", Token.subject == op.name))
        )
        out.append((op, grants, tokens))
    return out


# Tokens whose secret was verified against a stored hash: sha256(token) -> that hash. scrypt costs
# tens of milliseconds by design; a request re-presenting a verified token skips it, but the row is
# still read each time, so a revocation (or a new hash under the id) applies at once.
_VERIFIED: dict[bytes, str] = {}
_VERIFIED_MAX = 4096
_VERIFIED_LOCK = threading.Lock()


def _live_token(session: Session, presented: str, kind: str) -> Token | None:
    parsed = parse_token(presented)
    if parsed is None:
        return None
    token = session.get(Token, parsed[0])
    if token is None or token.kind != kind or token.revoked_at is not None:
        return None
    digest = hashlib.sha256(presented.strip().encode()).digest()
    with _VERIFIED_LOCK:
        if _VERIFIED.get(digest) == token.hashed:
            return token
    if not verify_secret(parsed[1], token.hashed):
        return None
    with _VERIFIED_LOCK:
        if len(_VERIFIED) >= _VERIFIED_MAX:
            _VERIFIED.clear()
        _VERIFIED[digest] = token.hashed
    return token


def principal_for_token(session: Session, presented: str) -> Principal | None:
    """The operator an operator token belongs to, with its grants; None if unknown, revoked or disabled."""
    token = _live_token(session, presented, "operator")
    return None if token is None else principal_named(session, token.subject)


def principal_named(session: Session, name: str) -> Principal | None:
    """The operator ``name`` as it is now (a UI session re-reads it: grants changes apply at once)."""
    op = session.get(Operator, name)
    if op is None or op.disabled_at is not None:
        return None
    grants = session.scalars(sa.select(Grant).where(Grant.operator == name))
    return Principal(name, {g.tenant: g.role for g in grants})


def trigger_token_matches(session: Session, presented: str, tenant: str) -> bool:
    """Whether ``presented`` is a live trigger token of ``tenant``."""
    token = _live_token(session, presented, "trigger")
    return token is not None and token.subject == tenant
