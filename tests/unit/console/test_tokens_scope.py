"""Token hashing and the principal's tenant scope."""

from __future__ import annotations

import pytest

from services.console.reads import decode_cursor, encode_cursor
from services.console.scope import Principal
from services.console.tokens import hash_secret, new_token, parse_token, verify_secret


def test_a_token_verifies_against_its_hash_and_nothing_else() -> None:
    token = new_token()
    token_id, secret = parse_token(token.token) or ("", "")
    assert token_id == token.token_id
    assert verify_secret(secret, token.hashed)
    assert not verify_secret(secret + "x", token.hashed)
    assert token.secret not in token.hashed
    assert hash_secret(secret) != token.hashed  # salted


@pytest.mark.parametrize("bad", ["", "sy_", "Bearer x", "sy_short_abc", "sy_abcdefghijkl_" + "!" * 40])
def test_malformed_tokens_are_refused(bad: str) -> None:
    assert parse_token(bad) is None


def test_malformed_hashes_never_verify() -> None:
    assert not verify_secret("x", "md5$abc")
    assert not verify_secret("x", "scrypt$zz")


def test_a_tenant_operator_reads_and_acts_on_its_tenants_only() -> None:
    p = Principal("ops@acme", {"acme": "operator", "beta": "viewer"})
    assert p.readable == frozenset({"acme", "beta"})
    assert p.can_read("acme") and p.can_read("beta") and not p.can_read("other")
    assert not p.can_read(None)
    assert p.can_act("acme") and not p.can_act("beta") and not p.can_act("other")


def test_a_global_role_reads_everything() -> None:
    viewer = Principal("auditor", {"*": "viewer"})
    assert viewer.readable is None and viewer.can_read(None) and not viewer.can_act("acme")
    admin = Principal("admin", {"*": "operator", "acme": "viewer"})
    assert admin.can_act("acme")


def test_cursors_round_trip_and_garbage_is_refused() -> None:
    from datetime import UTC, datetime

    at = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "run-1")) == (at, "run-1")
    for bad in ("", "!!!", encode_cursor(at, "r")[:-3] + "zzz"):
        with pytest.raises(ValueError):
            decode_cursor(bad)
