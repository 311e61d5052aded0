"""Publishing decides which content holds a version the way the registry readers do."""

from __future__ import annotations

import datetime as dt

import pytest

from services.registry.trust import content_holder, published_hashes
from services.workflow.signing import Keyring, Reason, SignatureError, verify_signed

from .helpers import KEY_B, T0, entry, key

KEYRING = Keyring(tenant="acme", keys=[key(not_after=T0), key(KEY_B, "k2")])


def test_the_first_authentic_record_holds_the_version_even_after_its_key_expired() -> None:
    original, replacement = entry(1, "echo"), entry(1, "noop", key=KEY_B, key_id="k2")
    held = published_hashes({"acme/chain/1": [original, replacement]}, "acme", KEYRING)
    assert held == {("chain", 1): original.signed.content_hash}
    # Publishing the replacement is refused as the reader refuses it; the original is idempotent.
    with pytest.raises(SignatureError) as refused:
        verify_signed(replacement.signed, "acme", KEYRING, held, T0 + dt.timedelta(days=1))
    assert refused.value.reason is Reason.VERSION_CONFLICT


def test_a_version_with_no_authentic_record_is_held_by_its_latest_record() -> None:
    unsigned = entry(2, "noop", signature="")
    assert content_holder([unsigned], KEYRING) is None
    assert published_hashes({"acme/chain/2": [unsigned]}, "acme", KEYRING) == {
        ("chain", 2): unsigned.signed.content_hash
    }


def test_other_tenants_versions_are_not_counted() -> None:
    assert published_hashes({"acme/chain/1": [entry(1)]}, "beta", KEYRING) == {}
