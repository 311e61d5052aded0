"""Building, signing and sending `ControlCommand`s (cancel, replay, approval decisions). Intake
verifies the signature and the router core applies them; the outcome (accepted or refused, with
the reason) lands in the run's history or the DLQ, and the projector stores it in
``control_commands`` for audit."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from confluent_kafka import Producer

from services.bus.clients import headers_for, plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.contracts.records import ControlCommand
from services.control.keys import OperatorKey
from services.control.signing import sign

Kind = Literal["cancel", "replay_run", "replay_step", "approve"]


def command(
    kind: Kind,
    tenant: str,
    run_id: str,
    requester: str,
    reason: str,
    step_id: str | None = None,
    correlation_id: str | None = None,
    *,
    key: OperatorKey | None = None,
    on_behalf_of: str | None = None,
    decision: str | None = None,
    comment: str | None = None,
) -> ControlCommand:
    """A new command (fresh id, issued now), signed by ``key`` when given (the requester then
    becomes the identity intake records: ``on_behalf_of`` or the key id). An approval decision
    (kind ``approve``) carries ``decision`` and ``comment``, both signed."""
    cmd: ControlCommand = {
        "command_id": str(uuid.uuid4()),
        "kind": kind,
        "requester": requester,
        "tenant": tenant,
        "run_id": run_id,
        "step_id": step_id,
        "reason": reason,
        "correlation_id": correlation_id or str(uuid.uuid4()),
        "issued_at": int(time.time() * 1000),
        "filter_json": None,
        "dry_run": False,
        "key_id": None,
        "signature": None,
        "on_behalf_of": on_behalf_of,
    }
    if decision is not None or comment is not None:
        cmd["decision"] = decision
        cmd["comment"] = comment
    return cmd if key is None else sign(cmd, key.key_id, key.private_key)


class ControlSender:
    """One producer for many commands (bulk replays send thousands)."""

    def __init__(self, settings: Settings) -> None:
        self.topic = Topics(settings.topic_prefix).control
        self.producer = Producer(plain_producer_config(settings))
        self.failures: list[str] = []

    def send(self, cmd: ControlCommand) -> None:
        def report(err: object, _msg: object) -> None:
            if err is not None:
                self.failures.append(str(err))

        while True:
            try:
                self.producer.produce(
                    self.topic,
                    key=cmd["run_id"],
                    value=serde.encode("ControlCommand", cmd),
                    headers=headers_for(cmd["tenant"], cmd["run_id"], cmd["correlation_id"]),
                    on_delivery=report,
                )
                break
            except BufferError:
                self.producer.poll(0.1)
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30) -> None:
        if self.producer.flush(timeout_s) != 0:
            self.failures.append(f"{len(self.producer)} commands not delivered within {timeout_s} s")
        if self.failures:
            raise RuntimeError(f"control topic {self.topic}: {self.failures[0]}")
