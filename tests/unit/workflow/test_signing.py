"""Signing and verification: every refusal reason, key rotation and idempotent republish."""

from __future__ import annotations

import base64
import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.workflow import (
    KeyEntry,
    Keyring,
    Reason,
    SignatureError,
    SignedDefinition,
    WorkflowDefinition,
    content_hash,
    sign_definition,
    verify_signed,
)
from services.workflow.signing import private_key_from_b64, private_key_to_b64, public_key_b64

from .helpers import definition

NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
KEY_A = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_B = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def entry(key: Ed25519PrivateKey, key_id: str = "k1", **window: dt.datetime) -> KeyEntry:
    return KeyEntry(key_id=key_id, public_key=public_key_b64(key), **window)


def ring(*entries: KeyEntry, tenant: str = "acme") -> Keyring:
    return Keyring(tenant=tenant, keys=list(entries))


DEFN = definition([{"id": "a", "action": "echo", "inputs": {"x": "${{ trigger.data.x }}"}}])


def signed(defn: WorkflowDefinition = DEFN, tenant: str = "acme", key_id: str = "k1") -> SignedDefinition:
    return sign_definition(defn, tenant=tenant, key_id=key_id, private_key=KEY_A)


def refusal(s: SignedDefinition, keyring: Keyring, published: dict[tuple[str, int], str] | None = None,
            tenant: str = "acme", now: dt.datetime = NOW) -> Reason:  # fmt: skip
    with pytest.raises(SignatureError) as info:
        verify_signed(s, tenant, keyring, published, now)
    assert info.value.message
    return info.value.reason


def test_valid_signature_verifies() -> None:
    verify_signed(signed(), "acme", ring(entry(KEY_A)), {}, NOW)


def test_envelope_round_trips_through_json() -> None:
    s = signed()
    again = SignedDefinition.model_validate_json(s.model_dump_json())
    assert again == s
    verify_signed(again, "acme", ring(entry(KEY_A)), None, NOW)
    assert set(s.model_dump()) == {"tenant", "definition", "key_id", "signature", "content_hash"}
    assert len(base64.b64decode(s.signature)) == 64
    assert s.content_hash == content_hash(DEFN)


def test_unsigned() -> None:
    assert refusal(signed().model_copy(update={"signature": ""}), ring(entry(KEY_A))) is Reason.UNSIGNED


def test_tampered_definition() -> None:
    other = definition([{"id": "a", "action": "echo", "inputs": {"x": "evil"}}])
    forged = signed().model_copy(update={"definition": other, "content_hash": content_hash(other)})
    assert refusal(forged, ring(entry(KEY_A))) is Reason.TAMPERED


def test_tampered_content_hash() -> None:
    forged = signed().model_copy(update={"content_hash": "0" * 64})
    assert refusal(forged, ring(entry(KEY_A))) is Reason.TAMPERED


def test_signature_by_another_key() -> None:
    assert refusal(signed(), ring(entry(KEY_B))) is Reason.TAMPERED


def test_malformed_signature() -> None:
    assert (
        refusal(signed().model_copy(update={"signature": "not base64!"}), ring(entry(KEY_A)))
        is Reason.MALFORMED
    )
    short = base64.b64encode(b"x" * 10).decode()
    assert refusal(signed().model_copy(update={"signature": short}), ring(entry(KEY_A))) is Reason.MALFORMED


def test_unknown_key_id() -> None:
    assert refusal(signed(key_id="k9"), ring(entry(KEY_A))) is Reason.UNKNOWN_KEY


def test_key_not_yet_valid_and_expired() -> None:
    assert refusal(signed(), ring(entry(KEY_A, not_before=NOW + DAY))) is Reason.KEY_NOT_YET_VALID
    assert refusal(signed(), ring(entry(KEY_A, not_after=NOW - DAY))) is Reason.KEY_EXPIRED
    verify_signed(signed(), "acme", ring(entry(KEY_A, not_before=NOW - DAY, not_after=NOW + DAY)), None, NOW)


def test_revoked_key() -> None:
    assert refusal(signed(), ring(entry(KEY_A, revoked_at=NOW - DAY))) is Reason.KEY_REVOKED
    verify_signed(signed(), "acme", ring(entry(KEY_A, revoked_at=NOW + DAY)), None, NOW)


def test_key_rotation_old_and_new_keys_both_verify_in_their_windows() -> None:
    keyring = ring(entry(KEY_A, "old", not_after=NOW + DAY), entry(KEY_B, "new", not_before=NOW - DAY))
    verify_signed(signed(key_id="old"), "acme", keyring, None, NOW)
    new = sign_definition(DEFN, tenant="acme", key_id="new", private_key=KEY_B)
    verify_signed(new, "acme", keyring, None, NOW)
    assert refusal(signed(key_id="old"), keyring, now=NOW + 2 * DAY) is Reason.KEY_EXPIRED


def test_definition_of_another_tenant() -> None:
    assert refusal(signed(tenant="globex"), ring(entry(KEY_A))) is Reason.TENANT_MISMATCH


def test_keyring_of_another_tenant() -> None:
    assert refusal(signed(), ring(entry(KEY_A), tenant="globex")) is Reason.TENANT_MISMATCH


def test_envelope_relabelled_to_another_tenant_fails_the_signature() -> None:
    # signed for acme, envelope edited to claim globex; globex's keyring has the same key id
    relabelled = signed().model_copy(update={"tenant": "globex"})
    assert refusal(relabelled, ring(entry(KEY_A), tenant="globex"), tenant="globex") is Reason.TAMPERED


def test_key_of_another_tenant_is_unknown() -> None:
    mine = sign_definition(DEFN, tenant="globex", key_id="acme-key", private_key=KEY_A)
    assert (
        refusal(mine, ring(entry(KEY_B, "globex-key"), tenant="globex"), tenant="globex")
        is Reason.UNKNOWN_KEY
    )


def test_versions_are_immutable_and_monotonic() -> None:
    keyring = ring(entry(KEY_A))
    v1 = signed()
    other_v1 = signed(definition([{"id": "b", "action": "noop"}]))
    v3 = signed(definition([{"id": "a", "action": "noop"}]).model_copy(update={"version": 3}))
    published = {("t", 1): v1.content_hash}
    verify_signed(v1, "acme", keyring, published, NOW)  # same content republished: idempotent
    assert refusal(other_v1, keyring, published) is Reason.VERSION_CONFLICT
    published[("t", 3)] = v3.content_hash
    v2 = signed(definition([{"id": "a", "action": "noop"}]).model_copy(update={"version": 2}))
    assert refusal(v2, keyring, published) is Reason.VERSION_REGRESSION
    v4 = signed(definition([{"id": "a", "action": "noop"}]).model_copy(update={"version": 4}))
    verify_signed(v4, "acme", keyring, published, NOW)
    verify_signed(v2, "acme", keyring, {("other", 9): "x" * 64}, NOW)  # other workflows do not count


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        verify_signed(signed(), "acme", ring(entry(KEY_A)), None, NOW.replace(tzinfo=None))


def test_key_encoding_round_trip_and_keyring_validation() -> None:
    assert public_key_b64(private_key_from_b64(private_key_to_b64(KEY_A))) == public_key_b64(KEY_A)
    with pytest.raises(ValueError, match="32 raw bytes"):
        KeyEntry(key_id="k", public_key=base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="duplicate key ids"):
        ring(entry(KEY_A), entry(KEY_B))
    with pytest.raises(ValueError):
        KeyEntry(key_id="k", public_key=public_key_b64(KEY_A), not_after=dt.datetime(2025, 1, 1))  # naive
