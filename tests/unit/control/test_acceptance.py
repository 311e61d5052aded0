"""Intake's two checks of a decoded command, without intake: plausible fields, then forward or refuse."""

from __future__ import annotations

from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.contracts.records import ControlCommand
from services.control.acceptance import accept, foreign_operator_key
from services.control.plausibility import CONTROL_LIMITS, implausible
from services.control.signing import sign
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry, Keyring, public_key_b64

NOW = 1_800_000_000_000
WINDOW = 300_000
ALICE = Ed25519PrivateKey.generate()


def acme() -> TenantConfig:
    entry = KeyEntry(key_id="alice@acme", public_key=public_key_b64(ALICE), role="operator")
    return TenantConfig(tenant="acme", keyring=Keyring(tenant="acme", keys=[entry]))


def cmd(**fields: Any) -> ControlCommand:
    base: dict[str, Any] = {
        "command_id": "c-1",
        "kind": "cancel",
        "requester": "mallory",
        "tenant": "acme",
        "run_id": "r-1",
        "step_id": None,
        "reason": "stuck",
        "correlation_id": "x",
        "issued_at": NOW,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
    }
    return cast(ControlCommand, {**base, **fields})


def decide(command: ControlCommand, tenant: TenantConfig | None = None) -> ControlCommand | str:
    return accept(command, tenant, {}, NOW, WINDOW, lambda _key_id: False)


def test_a_plausible_command_has_no_problem() -> None:
    assert implausible(cmd()) is None


@pytest.mark.parametrize("field", sorted(CONTROL_LIMITS))
def test_a_field_past_its_limit_is_named(field: str) -> None:
    problem = implausible(cmd(**{field: "x" * (CONTROL_LIMITS[field] + 1)}))
    assert problem is not None and problem.startswith(f"{field} is ")


def test_a_tenant_that_is_no_tenant_id_is_implausible() -> None:
    assert implausible(cmd(tenant="Not A Tenant")) == "tenant is not a tenant id ('Not A Tenant')"


def test_a_signed_command_is_forwarded_with_the_verified_requester() -> None:
    forwarded = decide(sign(cmd(), "alice@acme", ALICE), acme())
    assert isinstance(forwarded, dict)
    assert forwarded["requester"] == "alice@acme"  # never the claimed "mallory"


@pytest.mark.parametrize(
    ("command", "tenant", "refusal"),
    [
        (cmd(), None, "cancel by 'mallory': tenant 'acme' is not registered"),
        (cmd(kind="replay_bulk"), acme(), "replay_bulk by 'mallory': bulk replays are expanded"),
        (cmd(run_id=""), acme(), "cancel by 'mallory': the command names no run"),
        (cmd(), acme(), "unsigned_command: cancel by 'mallory' (unverified): "),
    ],
)
def test_what_is_not_forwarded_says_why(
    command: ControlCommand, tenant: TenantConfig | None, refusal: str
) -> None:
    decided = decide(command, tenant)
    assert isinstance(decided, str)
    assert decided.startswith(refusal)


def test_a_key_of_another_tenant_is_named_foreign_only_if_it_is_an_operator_key() -> None:
    beta = TenantConfig(
        tenant="beta",
        keyring=Keyring(
            tenant="beta",
            keys=[
                KeyEntry(key_id="bob@beta", public_key=public_key_b64(ALICE), role="operator"),
                KeyEntry(key_id="beta-1", public_key=public_key_b64(ALICE)),
            ],
        ),
    )
    tenants = [("acme", acme()), ("beta", beta)]
    foreign = foreign_operator_key(lambda: tenants, "acme")
    assert foreign("bob@beta")
    assert not foreign("beta-1")  # a definition key
    assert not foreign("alice@acme")  # acme's own
    assert not foreign_operator_key(lambda: tenants, "beta")("bob@beta")
    assert not foreign_operator_key(None, "acme")("bob@beta")  # a directory that cannot list
