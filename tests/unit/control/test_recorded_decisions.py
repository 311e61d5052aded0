"""What the projector records of a refused command: intake's refusals (from the control topic) and
the router core's (dead-lettered from the inbox, bare or in its envelope) both become
``control_commands`` rows; the same bytes from a tenant's trigger topic never do."""

from __future__ import annotations

import pytest

from services.contracts import serde
from services.contracts.dead_letters import encode_dead_letter
from services.control.commands import command
from services.projector.control import control_from_dead_letter
from services.projector.dead_letter_store import DeadLetter, decode_dead_letter
from services.projector.events import Coordinates

CMD = command("replay_run", "acme", "run-1", "alice@acme", "upstream fixed")
BARE = serde.encode("ControlCommand", CMD)
ENVELOPE = serde.encode_inbox("ControlCommand", CMD)


def letter(topic: str, value: bytes, message: str = "no run run-1 of tenant acme") -> DeadLetter:
    raw = encode_dead_letter(
        "router.core", "control_refused", message, 1_800_000_000_000, topic=topic, value=value, tenant="acme"
    )
    decoded = decode_dead_letter(raw, b"acme", Coordinates("wf.dlq", 0, 7), control_topic="wf.control")
    assert isinstance(decoded, DeadLetter)
    return decoded


@pytest.mark.parametrize(
    ("topic", "value"),
    [("wf.control", BARE), ("wf.inbox", BARE), ("wf.inbox", ENVELOPE)],
    ids=[
        "control-bare",
        "inbox-bare",
        "inbox-envelope",
    ],  # the values hold a fresh uuid: the same ids on every worker
)
def test_refusals_of_intake_and_of_the_core_are_control_decisions(topic: str, value: bytes) -> None:
    row = control_from_dead_letter(letter(topic, value))
    assert row is not None
    assert (row["command_id"], row["outcome"], row["refusal"]) == (
        CMD["command_id"],
        "refused",
        "no run run-1 of tenant acme",
    )


@pytest.mark.parametrize("topic", ["wf.tenant.acme.triggers", "other.inbox", "wf.commands"])
def test_a_command_found_elsewhere_is_not_a_decision(topic: str) -> None:
    assert control_from_dead_letter(letter(topic, BARE)) is None


def test_an_inbox_record_that_is_not_a_command_is_not_a_decision() -> None:
    result = serde.encode_inbox(
        "RunRequested",
        {
            "run_id": "r",
            "tenant": "acme",
            "workflow": "w",
            "version": 1,
            "event_type": "go",
            "data_json": "{}",
            "idempotency_key": "k",
            "correlation_id": "c",
            "source": "s",
            "requested_at": 0,
        },
    )
    assert control_from_dead_letter(letter("wf.inbox", result)) is None


def test_an_unverified_command_does_not_record_the_name_it_claims_as_the_requester() -> None:
    forged = letter("wf.control", BARE, "bad_signature: replay_run by 'alice@acme' (unverified): ...")
    row = control_from_dead_letter(forged)
    assert row is not None and row["requester"] == "unverified: alice@acme"
    core = control_from_dead_letter(letter("wf.inbox", BARE))  # verified by intake, refused by the core
    assert core is not None and core["requester"] == "alice@acme"
