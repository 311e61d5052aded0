"""What the console does to the engine: control commands (replay, cancel) and tenant triggers,
both produced to Kafka exactly as ``switchyard replay``/``cancel``/``trigger`` produce them.

Commands reuse :func:`services.control.commands.command` and :class:`ControlSender`. The console
is a trusted gateway: it signs every command with its own key (``SWITCHYARD_OPERATOR_KEY_FILE``,
registered as a global operator key in ``SWITCHYARD_OPERATOR_KEYS``) and names the authenticated
operator as ``on_behalf_of``, which intake records as the requester; the router applies the
command, and the projector records the decision in ``control_commands``, which the console shows.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.contracts.records import ControlCommand
from services.control.commands import ControlSender, Kind, command
from services.control.keys import NoOperatorKey, OperatorKey, configured_key


class DeliveryFailed(RuntimeError):
    """Kafka did not take the record (the message says why)."""


class Gateway:
    """The console's one producer for control commands and one for triggers (both thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._control: ControlSender | None = None
        self._triggers: Producer | None = None
        self._key: OperatorKey | None = None

    def _signer(self) -> OperatorKey:
        """The console's own operator key, read once."""
        with self._lock:
            if self._key is None:
                try:
                    self._key = configured_key(self.settings)
                except NoOperatorKey as exc:
                    raise DeliveryFailed(f"the console cannot sign commands: {exc}") from exc
            return self._key

    def _sender(self) -> ControlSender:
        with self._lock:
            if self._control is None:
                self._control = ControlSender(self.settings)
            return self._control

    def send_commands(self, commands: list[ControlCommand]) -> None:
        sender = self._sender()
        with self._lock:  # ControlSender keeps one failure list: one batch at a time
            sender.failures.clear()
            for cmd in commands:
                sender.send(cmd)
            try:
                sender.flush()
            except RuntimeError as exc:
                raise DeliveryFailed(str(exc)) from exc

    def control(
        self,
        kind: Kind,
        tenant: str,
        run_id: str,
        requester: str,
        reason: str,
        step_id: str | None = None,
    ) -> ControlCommand:
        key = self._signer()
        cmd = command(
            kind, tenant, run_id, requester, reason, step_id=step_id, key=key, on_behalf_of=requester
        )
        self.send_commands([cmd])
        return cmd

    def bulk_replay(
        self, tenant: str, run_ids: list[str], requester: str, reason: str
    ) -> tuple[str, list[str]]:
        """One ``replay_run`` per run under a shared correlation id (as the CLI's bulk replay)."""
        bulk_id, key = str(uuid.uuid4()), self._signer()
        cmds = [
            command(
                "replay_run",
                tenant,
                r,
                requester,
                reason,
                correlation_id=bulk_id,
                key=key,
                on_behalf_of=requester,
            )
            for r in run_ids
        ]
        self.send_commands(cmds)
        return bulk_id, [c["command_id"] for c in cmds]

    def trigger(
        self, tenant: str, event_type: str, data_json: str, idempotency_key: str, correlation_id: str | None
    ) -> TriggerReceipt:
        """Produce one trigger to the tenant's trigger topic and wait for the broker's ack."""
        with self._lock:
            if self._triggers is None:
                self._triggers = Producer(plain_producer_config(self.settings))
            producer = self._triggers
        record = {
            "event_type": event_type,
            "data_json": data_json,
            "idempotency_key": idempotency_key,
            "correlation_id": correlation_id,
            "occurred_at": int(time.time() * 1000),
        }
        topic = Topics(self.settings.topic_prefix).tenant_triggers(tenant)
        done = threading.Event()
        outcome: dict[str, Any] = {}

        def report(err: Any, msg: Any) -> None:
            outcome["error"], outcome["msg"] = err, msg
            done.set()

        try:
            producer.produce(
                topic, key=idempotency_key, value=serde.encode("TriggerEvent", record), on_delivery=report
            )
        except (BufferError, KafkaException) as exc:
            raise DeliveryFailed(f"could not produce to {topic}: {exc}") from exc
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            producer.poll(0.05)
        if not done.is_set():
            raise DeliveryFailed(f"no acknowledgement from {topic} within 30 s")
        if outcome["error"] is not None:
            raise DeliveryFailed(f"could not produce to {topic}: {outcome['error']}")
        msg = outcome["msg"]
        return TriggerReceipt(topic, msg.partition(), msg.offset(), idempotency_key)

    def close(self) -> None:
        with self._lock:
            for producer in (self._triggers, self._control.producer if self._control else None):
                if producer is not None:
                    producer.flush(5)


@dataclass(frozen=True)
class TriggerReceipt:
    topic: str
    partition: int
    offset: int
    idempotency_key: str
