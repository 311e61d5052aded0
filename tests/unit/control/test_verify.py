"""Intake's verdict on an operator command: each refusal reason, and what an accepted one records."""

from __future__ import annotations

import datetime as dt
from typing import Any, Unpack, cast

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.contracts.records import ControlCommand
from services.control.signing import sign, signing_payload
from services.control.verify import CommandRefused, Reason, verify_command
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry, Keyring, public_key_b64
from tests.fixtures.records import ControlCommandFields

NOW = 1_800_000_000_000
WINDOW = 300_000
ALICE = Ed25519PrivateKey.generate()  # acme's operator
CONSOLE = Ed25519PrivateKey.generate()  # a global (gateway) key
BOB = Ed25519PrivateKey.generate()  # beta's operator
SIGNER = Ed25519PrivateKey.generate()  # acme's definition signing key


def acme(**key: Any) -> TenantConfig:
    entries = [
        KeyEntry(key_id="alice@acme", public_key=public_key_b64(ALICE), role="operator", **key),
        KeyEntry(key_id="acme-1", public_key=public_key_b64(SIGNER)),
    ]
    return TenantConfig(tenant="acme", keyring=Keyring(tenant="acme", keys=entries))


GLOBAL = {"console": public_key_b64(CONSOLE)}


def cmd(**fields: Unpack[ControlCommandFields]) -> ControlCommand:
    base: ControlCommand = {
        "command_id": "c-1",
        "kind": "replay_run",
        "requester": "whoever",
        "tenant": "acme",
        "run_id": "r-1",
        "step_id": None,
        "reason": "upstream fixed",
        "correlation_id": "x",
        "issued_at": NOW,
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": None,
    }
    return {**base, **fields}


def refusal(command: ControlCommand, tenant: TenantConfig | None = None, **kw: Any) -> Reason:
    with pytest.raises(CommandRefused) as caught:
        verify_command(command, tenant or acme(), GLOBAL, NOW, WINDOW, **kw)
    return caught.value.reason


def test_a_tenant_operator_key_is_recorded_as_the_requester() -> None:
    verified = verify_command(sign(cmd(), "alice@acme", ALICE), acme(), GLOBAL, NOW, WINDOW)
    assert (verified.requester, verified.key_id, verified.scope) == ("alice@acme", "alice@acme", "tenant")


def test_a_gateway_key_records_the_operator_it_acts_for() -> None:
    signed = sign(cmd(on_behalf_of="ops@acme"), "console", CONSOLE)
    verified = verify_command(signed, acme(), GLOBAL, NOW, WINDOW)
    assert (verified.requester, verified.key_id, verified.scope) == ("ops@acme", "console", "global")


def test_unsigned_commands_are_refused() -> None:
    assert refusal(cmd()) is Reason.UNSIGNED
    assert refusal(cmd(key_id="alice@acme")) is Reason.UNSIGNED


@pytest.mark.parametrize(
    "tamper",
    [
        {"run_id": "r-2"},
        {"kind": "cancel"},
        {"reason": "because"},
        {"step_id": "call"},
        {"issued_at": NOW + 1},
        {"command_id": "c-2"},
        {"tenant": "acme", "on_behalf_of": "ceo@acme"},
    ],
)
def test_a_signed_field_changed_in_transit_breaks_the_signature(tamper: ControlCommandFields) -> None:
    signed = sign(cmd(), "alice@acme", ALICE)
    assert refusal({**signed, **tamper}) is Reason.BAD_SIGNATURE


def test_a_forged_signature_under_a_registered_key_id_is_refused() -> None:
    assert refusal(sign(cmd(), "alice@acme", Ed25519PrivateKey.generate())) is Reason.BAD_SIGNATURE
    assert refusal({**sign(cmd(), "alice@acme", ALICE), "signature": b"\0" * 64}) is Reason.BAD_SIGNATURE
    assert refusal({**sign(cmd(), "alice@acme", ALICE), "signature": b"short"}) is Reason.BAD_SIGNATURE


def test_the_requester_field_is_not_trusted() -> None:
    signed: ControlCommand = {**sign(cmd(), "alice@acme", ALICE), "requester": "ceo@acme"}
    assert verify_command(signed, acme(), GLOBAL, NOW, WINDOW).requester == "alice@acme"


@pytest.mark.parametrize("offset", [-WINDOW - 1, WINDOW + 1, -(10**12)])
def test_commands_issued_outside_the_window_are_stale(offset: int) -> None:
    assert refusal(sign(cmd(issued_at=NOW + offset), "alice@acme", ALICE)) is Reason.STALE


def test_the_window_edges_are_accepted() -> None:
    for offset in (-WINDOW, WINDOW):
        verify_command(sign(cmd(issued_at=NOW + offset), "alice@acme", ALICE), acme(), GLOBAL, NOW, WINDOW)


def test_another_tenants_operator_key_is_refused_as_foreign() -> None:
    signed = sign(cmd(), "bob@beta", BOB)
    assert refusal(signed, foreign_operator_key=lambda key_id: key_id == "bob@beta") is Reason.FOREIGN_KEY
    assert refusal(signed) is Reason.UNKNOWN_KEY


def test_a_definition_signing_key_is_not_an_operator_key() -> None:
    assert refusal(sign(cmd(), "acme-1", SIGNER)) is Reason.NOT_OPERATOR_KEY


def test_revoked_expired_and_future_keys_are_refused() -> None:
    at = dt.datetime.fromtimestamp(NOW / 1000, dt.UTC)
    signed = sign(cmd(), "alice@acme", ALICE)
    for window in (
        {"revoked_at": at},
        {"not_after": at},
        {"not_before": at + dt.timedelta(seconds=1)},
    ):
        assert refusal(signed, acme(**window)) is Reason.KEY_NOT_VALID


def test_only_global_keys_may_act_on_behalf_of_someone() -> None:
    assert refusal(sign(cmd(on_behalf_of="ceo@acme"), "alice@acme", ALICE)) is Reason.NOT_A_GATEWAY


def test_the_signed_message_is_canonical_and_separated_from_definition_signatures() -> None:
    a = signing_payload(cmd(key_id="k"))
    # the same record with its fields in the reverse order
    b = signing_payload(cast(ControlCommand, dict(reversed(cmd(key_id="k").items()))))
    assert a == b
    assert b'"purpose":"switchyard.control.v1"' in a
    assert b"correlation_id" not in a and b"requester" not in a


def test_a_command_that_cannot_be_canonicalised_is_a_bad_signature_not_a_crash() -> None:
    signed = sign(cmd(), "alice@acme", ALICE)
    assert refusal({**signed, "reason": "\ud800"}) is Reason.BAD_SIGNATURE
