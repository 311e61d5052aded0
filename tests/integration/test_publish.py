"""Publishing signed definitions to the registry on a real broker: immutable versions."""

from __future__ import annotations

import pytest

from services.bus.topics import admin_client, ensure_topics, internal_specs
from services.registry.publishing import PublishRefused, publish_signed, read_definitions
from services.workflow.loader import load_definition_text
from services.workflow.signing import (
    SignedDefinition,
    generate_keypair,
    private_key_from_b64,
    sign_definition,
)
from tests.fixtures.engine import make_settings, register_tenant

pytestmark = pytest.mark.integration

DEFN = """
name: pub
version: {version}
trigger: {{event: go}}
steps:
  - {{id: a, action: {action}}}
"""


def test_versions_are_immutable_and_only_move_forward(kafka_bootstrap: str, unique: str) -> None:
    settings = make_settings(kafka_bootstrap, f"p{unique}")
    ensure_topics(admin_client(settings), internal_specs(settings))
    private, public = generate_keypair()
    register_tenant(settings, "acme", public)
    key = private_key_from_b64(private)

    def signed(version: int, action: str = "noop", tenant: str = "acme") -> SignedDefinition:
        text = DEFN.format(version=version, action=action)
        return sign_definition(load_definition_text(text), tenant=tenant, key_id="k1", private_key=key)

    assert publish_signed(settings, signed(2), "tests") is True
    assert publish_signed(settings, signed(2), "tests") is False  # identical: idempotent
    with pytest.raises(PublishRefused, match="version_conflict"):
        publish_signed(settings, signed(2, action="echo"), "tests")
    with pytest.raises(PublishRefused, match="version_regression"):
        publish_signed(settings, signed(1), "tests")
    assert publish_signed(settings, signed(3, action="echo"), "tests") is True
    with pytest.raises(PublishRefused, match="does not exist"):
        publish_signed(settings, signed(1, tenant="nobody"), "tests")
    versions = sorted(e.signed.version for e in read_definitions(settings).values() if e.tenant == "acme")
    assert versions == [2, 3]
