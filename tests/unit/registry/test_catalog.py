"""The definitions catalog at runtime: trust ends on time, versions are immutable, refusals show.

The registry tables are :class:`KeyedValues` fed by hand (what the topic reader does with each
record) and the clock is injected, so nothing here needs a broker or waits.
"""

from __future__ import annotations

import logging

import pytest

from services.observability.metrics import DEFINITIONS_REFUSED
from services.registry.definitions import HISTORY_PER_VERSION
from services.tenancy.config import TenantConfig

from .helpers import HOUR, KEY_B, T0, Registry, entry, key


def test_a_key_that_expires_between_two_calls_stops_its_definitions_at_once() -> None:
    reg = Registry(key(not_after=T0 + HOUR))
    reg.publish(entry(1))
    assert reg.steps() == ["echo"]
    assert [w.version for w in reg.catalog.latest_for("acme")] == [1]
    assert reg.catalog.untrusted_reason("acme", "chain", 1) is None
    version = reg.definitions.version

    reg.clock.now = T0 + HOUR  # no registry change in between
    assert reg.definitions.version == version
    assert reg.catalog.get("acme", "chain", 1) is None
    assert reg.catalog.latest_for("acme") == []
    reason = reg.catalog.untrusted_reason("acme", "chain", 1)
    assert reason == f"key_expired: key 'k1' expired at {(T0 + HOUR).isoformat()}"


def test_a_revocation_ends_trust_at_its_instant_and_says_so() -> None:
    reg = Registry(key())
    reg.publish(entry(1))
    assert reg.steps() == ["echo"]
    reg.set_keys(key(revoked_at=T0 + 2 * HOUR, not_after=T0 + 5 * HOUR))  # revocation announced ahead
    assert reg.steps() == ["echo"]
    reg.clock.now = T0 + 2 * HOUR
    assert reg.catalog.get("acme", "chain", 1) is None
    reason = reg.catalog.untrusted_reason("acme", "chain", 1)
    assert reason == f"key_revoked: key 'k1' was revoked at {(T0 + 2 * HOUR).isoformat()}"


def test_a_revocation_already_past_when_the_keyring_changes_applies_on_the_next_read() -> None:
    reg = Registry(key())
    reg.publish(entry(1))
    assert reg.steps() == ["echo"]
    reg.set_keys(key(revoked_at=T0 - HOUR))
    assert reg.catalog.get("acme", "chain", 1) is None
    assert (reg.catalog.untrusted_reason("acme", "chain", 1) or "").startswith("key_revoked: ")


def test_a_removed_key_or_tenant_is_named_as_the_reason() -> None:
    reg = Registry(key())
    reg.publish(entry(1))
    assert reg.steps() == ["echo"]
    reg.set_keys(key(KEY_B, "k2"))
    assert reg.catalog.get("acme", "chain", 1) is None
    assert reg.catalog.untrusted_reason("acme", "chain", 1) == (
        "key_removed: key 'k1' was removed from tenant 'acme''s keyring"
    )
    reg.tenants.delete("acme")
    assert reg.catalog.untrusted_reason("acme", "chain", 1) == (
        "tenant_removed: tenant 'acme' is no longer registered"
    )


def test_latest_for_falls_back_to_the_newest_version_still_trusted() -> None:
    reg = Registry(key(not_after=T0 + HOUR), key(KEY_B, "k2"))
    reg.publish(entry(1, key=KEY_B, key_id="k2"))
    reg.publish(entry(2, "noop"))  # signed with k1, which expires first
    assert [w.version for w in reg.catalog.latest_for("acme")] == [2]
    reg.clock.now = T0 + HOUR
    assert [w.version for w in reg.catalog.latest_for("acme")] == [1]
    assert reg.steps(1) == ["echo"]


def test_trust_starts_at_not_before() -> None:
    reg = Registry(key(not_before=T0 + HOUR))
    reg.publish(entry(1))
    assert reg.catalog.get("acme", "chain", 1) is None
    assert (reg.catalog.untrusted_reason("acme", "chain", 1) or "").startswith("key_not_yet_valid: ")
    reg.clock.now = T0 + HOUR
    assert reg.steps() == ["echo"]


def test_different_content_under_a_published_version_is_refused_and_visible(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg = Registry(key())
    reg.publish(entry(1, "echo"))
    assert reg.steps() == ["echo"]
    with caplog.at_level(logging.WARNING, logger="services.registry.definitions"):
        reg.publish(entry(1, "noop"))  # validly signed, same key, same version: a replacement
        assert reg.steps() == ["echo"]  # the first verified content stays
        refusal = reg.catalog.refused["acme/chain/1"]
    assert refusal.startswith("version_conflict: chain v1 is already published with different content")
    assert reg.catalog.untrusted_reason("acme", "chain", 1) is None  # v1 itself is still trusted
    assert DEFINITIONS_REFUSED.labels("version_conflict")._value.get() == 1  # set by this catalog's read
    logged = [r for r in caplog.records if r.getMessage() == "definition refused"]
    assert [(r.__dict__["tenant"], r.__dict__["reason"]) for r in logged] == [("acme", "version_conflict")]
    # Reading again logs nothing new; the refusal stays until the record goes.
    with caplog.at_level(logging.WARNING, logger="services.registry.definitions"):
        reg.tenants.put("beta", TenantConfig(tenant="beta"))
        assert reg.steps() == ["echo"]
    assert len([r for r in caplog.records if r.getMessage() == "definition refused"]) == 1


def test_a_replacement_between_two_reads_is_still_refused() -> None:
    reg = Registry(key())
    reg.publish(entry(1, "echo"))
    reg.publish(entry(1, "noop"))  # before the catalog ever read the table
    assert reg.steps() == ["echo"]
    assert reg.catalog.refused["acme/chain/1"].startswith("version_conflict: ")


def test_a_conflicting_version_stays_refused_after_the_original_key_expires() -> None:
    reg = Registry(key(not_after=T0 + HOUR), key(KEY_B, "k2"))
    reg.publish(entry(1, "echo"))
    reg.clock.now = T0 + 2 * HOUR
    reg.publish(entry(1, "noop", key=KEY_B, key_id="k2"))
    assert reg.catalog.get("acme", "chain", 1) is None
    assert reg.catalog.refused["acme/chain/1"].startswith("version_conflict: ")
    assert (reg.catalog.untrusted_reason("acme", "chain", 1) or "").startswith("key_expired: ")


def test_identical_republication_is_accepted() -> None:
    reg = Registry(key(not_after=T0 + HOUR), key(KEY_B, "k2"))
    reg.publish(entry(1))
    reg.publish(entry(1))  # the same record again
    assert reg.steps() == ["echo"]
    assert reg.catalog.refused == {}
    # The same content signed again with another key is the same version too, and keeps it
    # trusted once the first key expires.
    reg.publish(entry(1, key=KEY_B, key_id="k2"))
    reg.clock.now = T0 + 2 * HOUR
    assert reg.steps() == ["echo"]
    assert reg.catalog.refused == {}
    assert reg.catalog.untrusted_reason("acme", "chain", 1) is None


def test_content_that_never_verified_does_not_hold_the_version() -> None:
    reg = Registry(key())
    reg.publish(entry(1, "noop", signature=""))  # unsigned
    assert reg.catalog.get("acme", "chain", 1) is None
    assert reg.catalog.refused["acme/chain/1"].startswith("unsigned: ")
    reg.publish(entry(1, "echo"))
    assert reg.steps() == ["echo"]
    assert "acme/chain/1" not in reg.catalog.refused


def test_a_deleted_definition_tells_its_runs_and_frees_the_version() -> None:
    reg = Registry(key())
    reg.publish(entry(1, "echo"))
    assert reg.steps() == ["echo"]
    reg.definitions.delete("acme/chain/1")
    assert reg.catalog.get("acme", "chain", 1) is None
    assert reg.catalog.untrusted_reason("acme", "chain", 1) == (
        "definition_removed: chain v1 was deleted from the registry"
    )
    reg.publish(entry(1, "noop"))
    assert reg.steps() == ["noop"]


def test_unknown_definitions_have_no_untrusted_reason() -> None:
    reg = Registry(key())
    assert reg.catalog.untrusted_reason("acme", "chain", 7) is None
    assert reg.catalog.untrusted_reason("nobody", "chain", 1) is None


def test_history_per_version_is_bounded_and_keeps_the_first() -> None:
    reg = Registry(key())
    for n in range(50):
        reg.publish(entry(1, "echo" if n == 0 else f"act{n}"))
    ((_, history),) = reg.definitions.histories()
    assert len(history) == HISTORY_PER_VERSION
    assert history[0].signed.definition.steps[0].action == "echo"
    assert history[-1].signed.definition.steps[0].action == "act49"
    assert reg.steps() == ["echo"]


def test_all_for_lists_every_trusted_version_of_every_workflow() -> None:
    """What runs may wait for is in any version they started on (intake forwards events by it)."""
    reg = Registry(key())
    for e in (entry(1), entry(2), entry(1, name="other")):
        reg.publish(e)
    assert sorted((w.name, w.version) for w in reg.catalog.all_for("acme")) == [
        ("chain", 1),
        ("chain", 2),
        ("other", 1),
    ]
    assert reg.catalog.all_for("nobody") == []
