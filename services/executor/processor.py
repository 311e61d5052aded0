"""The executor's :class:`~services.bus.txloop.Processor`: a batch of StepCommands → StepResults.

For each batch handed over by the transactional loop:

1. decode every record as a ``StepCommand``; an undecodable one (or one whose
   ``reply_partition`` does not exist) becomes a ``DeadLetter`` on the DLQ topic, with a reason;
2. run every command's action concurrently on the processor's event loop (one loop for the
   process's lifetime, so connection pools survive between batches), each under its deadline and
   the processor's guardrails (permissions, circuit breakers and the per-tenant external-call
   rate limit, shared by the whole batch and by later ones);
3. produce one ``StepResult`` per command to the inbox partition the command names, keyed by
   run id, *in command order*, with the identity headers.

The loop then commits the results together with the consumed offsets, so a command's result is
published exactly once; the action itself may run again if the transaction aborts or the process
dies before the commit (at-least-once side effects, hence the idempotency key).

Results are produced only after the whole batch has run: the Kafka transaction (and its timeout)
starts with the first produced record, so slow actions never hold a transaction open. A batch is
bounded by its slowest attempt, which ``max_attempt_s`` caps below the consumer's
``max.poll.interval.ms``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message, TopicPartition

from services.bus import clients
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.contracts import serde
from services.executor.execute import GrantsLookup, execute_command
from services.executor.guardrails import Guardrails
from services.executor.plugins import ActionRegistry
from services.observability import logs, metrics

log = logging.getLogger("services.executor")

SERVICE = "executor"
MAX_DLQ_VALUE = 512 * 1024
DEFAULT_MAX_ATTEMPT_S = 240.0  # below the consumer's max.poll.interval.ms (300 s)


@dataclass(frozen=True)
class _Identity:
    tenant: str | None
    run_id: str | None
    correlation_id: str | None


def _header_identity(msg: Message) -> _Identity:
    found: dict[str, str] = {}
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    for name, value in pairs:
        if name in ("tenant", "run_id", "correlation_id") and value is not None:
            found[name] = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return _Identity(found.get("tenant"), found.get("run_id"), found.get("correlation_id"))


class ExecutorProcessor:
    """Stateless: nothing to restore on assignment, nothing to undo on abort."""

    def __init__(
        self,
        registry: ActionRegistry,
        topics: Topics,
        *,
        executor_id: str,
        inbox_partitions: int | None = None,
        grants: GrantsLookup | None = None,
        guardrails: Guardrails | None = None,
        max_attempt_s: float | None = DEFAULT_MAX_ATTEMPT_S,
        ready: threading.Event | None = None,
    ) -> None:
        """``guardrails`` (breakers, rate limit, grants) live as long as the processor, so that
        breaker states and token buckets span batches; by default: breakers and ``grants`` only."""
        self.registry = registry
        self.topics = topics
        self.executor_id = executor_id
        self.inbox_partitions = inbox_partitions
        self.guardrails = guardrails if guardrails is not None else Guardrails.create(grants=grants)
        if self.guardrails.grants is None and grants is not None:
            self.guardrails.grants = grants
        self.max_attempt_s = max_attempt_s
        self._ready = ready
        self.loop = asyncio.new_event_loop()

    # --- Processor protocol ------------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        if self._ready is not None:
            self._ready.set()

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Nothing to forget: the executor keeps no per-partition state."""

    def tick(self, out: Outbox) -> None:
        """No timers: deadlines are enforced while the batch runs."""

    def on_abort(self) -> None:
        """Nothing to undo; the rewound commands run again (at-least-once side effects)."""

    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        batch_started = time.monotonic()
        commands: list[dict[str, Any]] = []
        for msg in messages:
            command = self._decode(msg, out)
            if command is not None:
                commands.append(command)
        if not commands:
            return
        results = self.loop.run_until_complete(self._run_all(commands))
        for command, result in zip(commands, results, strict=True):
            out.send(
                self.topics.inbox,
                serde.encode_inbox("StepResult", result),
                key=command["run_id"],
                partition=command["reply_partition"],
                headers=clients.headers_for(command["tenant"], command["run_id"], command["correlation_id"]),
            )
            metrics.HANDLER_SECONDS.labels(SERVICE, "StepCommand", command["tenant"]).observe(
                time.monotonic() - batch_started
            )

    # --- internals ---------------------------------------------------------------------------
    async def _run_all(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return list(
            await asyncio.gather(
                *(
                    execute_command(
                        self.registry,
                        command,
                        executor_id=self.executor_id,
                        guardrails=self.guardrails,
                        max_attempt_s=self.max_attempt_s,
                    )
                    for command in commands
                )
            )
        )

    def _decode(self, msg: Message, out: Outbox) -> dict[str, Any] | None:
        try:
            _, command = serde.decode(msg.value(), expected="StepCommand")
        except serde.ContractError as exc:
            self._dead_letter(msg, out, exc.kind, exc.message, _header_identity(msg))
            return None
        partition = command["reply_partition"]
        if self.inbox_partitions is not None and not 0 <= partition < self.inbox_partitions:
            self._dead_letter(
                msg,
                out,
                "bad_reply_partition",
                f"reply_partition {partition} is not a partition of {self.topics.inbox} "
                f"(0..{self.inbox_partitions - 1})",
                _Identity(command["tenant"], command["run_id"], command["correlation_id"]),
                command=command,
            )
            return None
        return command

    def _dead_letter(
        self,
        msg: Message,
        out: Outbox,
        kind: str,
        message: str,
        identity: _Identity,
        command: dict[str, Any] | None = None,
    ) -> None:
        value: bytes | None = msg.value()
        if value is not None and len(value) > MAX_DLQ_VALUE:
            message += f" (original value truncated from {len(value)} bytes)"
            value = value[:MAX_DLQ_VALUE]
        key = msg.key()
        record = {
            "dlq_id": f"{SERVICE}:{msg.topic()}:{msg.partition()}:{msg.offset()}",
            "service": SERVICE,
            "error_kind": kind,
            "error_message": message,
            "original_topic": msg.topic(),
            "original_partition": msg.partition(),
            "original_offset": msg.offset(),
            "original_key": key.encode() if isinstance(key, str) else key,
            "original_value": value,
            "attempt": command["attempt"] if command else None,
            "tenant": identity.tenant,
            "correlation_id": identity.correlation_id,
            "run_id": identity.run_id,
            "step_id": command["step_id"] if command else None,
            "failed_at": int(time.time() * 1000),
        }
        out.send(
            self.topics.dlq,
            serde.encode("DeadLetter", record),
            key=msg.key(),
            headers=clients.headers_for(identity.tenant, identity.run_id, identity.correlation_id),
        )
        metrics.DLQ_RECORDS.labels(SERVICE, kind, identity.tenant or "unknown").inc()
        log.warning(
            "command dead-lettered",
            extra=logs.ids(
                identity.tenant,
                identity.run_id,
                identity.correlation_id,
                error_kind=kind,
                error_message=message,
                partition=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}",
            ),
        )

    def close(self) -> None:
        """Release what actions hold on the event loop, then close it."""
        if self.loop.is_closed():
            return
        try:
            self.loop.run_until_complete(self.registry.aclose())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            self.loop.close()
