"""The executor's :class:`~services.bus.txloop.Processor`: StepCommands → StepResults, pipelined.

Actions run as tasks on one asyncio event loop in a background thread (one loop for the
process's lifetime, so connection pools survive), each under its deadline and the guardrails
(permissions, circuit breakers, the per-tenant external-call rate limit). A batch crosses to that
thread once: one coroutine starts the batch's tasks and waits a moment (``QUICK_WAIT_S``) for the
quick ones; each task hands its finished attempt back through a queue the Kafka thread drains —
no future, no cross-thread wake-up per command. The processor never
waits for a batch to finish: every transaction produces the results of the attempts that have
completed since the last one, in whatever order they complete, and commits, per partition, the
offset of the oldest command still running. So a slow step — say a two-minute call — delays no
other step, not even one of the same tenant on the same partition.

Delivery: a command whose result was not yet committed when the process dies (or the partition
moves) is consumed and run again: side effects are at-least-once (hence the idempotency key
``run_id:step_id:attempt``), and a result produced out of order ahead of the committed offset can
be produced twice. The router applies a result only to the running attempt it names, so a
duplicate is ignored (and counted) and run state stays exactly-once.

Backpressure: above ``max_in_flight`` running attempts the processor pauses its partitions and
resumes them below half of that.

Long attempts: the consumer keeps polling while attempts run, so an attempt may take as long as
its step's timeout allows (up to ``SWITCHYARD_MAX_STEP_TIMEOUT_S``, which publishing enforces)
without the consumer leaving its group. While it runs, its partition's committed offset stays at
its command: a crash or a rebalance in that time runs it again, and with it every later command
of the partition whose result was already produced (their duplicate results are ignored). That
re-run window, and the offsets held in memory until then, are what the limit bounds.

Cancellation: every running attempt is registered in :attr:`ExecutorProcessor.attempts`, where
the :class:`~services.executor.cancellation.CancellationWatcher` cancels those the router gave up
on; their result is a failure of kind ``cancelled``.

Total: whatever one command does, the loop goes on. An undecodable command, one whose
``reply_partition`` does not exist or whose identity fields are implausibly large becomes a
``DeadLetter`` with a reason (``invalid_field`` for the latter, ``executor_error`` for anything
unexpected). A result that cannot be encoded becomes a failed result (``executor_error``); one
that would not fit the record budget becomes a failed result without output
(``output_too_large``); and if not even that can be written, a dead letter.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.bus import clients
from services.bus.record_budget import RecordTooLarge
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import records, serde
from services.contracts.dead_letters import bounded_identity, encode_dead_letter
from services.contracts.identity import implausible_identity
from services.contracts.records import StepCommand, StepResult
from services.contracts.text import bounded_text
from services.executor.cancellation import InFlightAttempts
from services.executor.execute import GrantsLookup, execute_command, tenant_label
from services.executor.guardrails import Guardrails
from services.executor.plugins import ActionRegistry
from services.observability import logs, metrics
from services.secrets import SecretResolver

log = logging.getLogger("services.executor")

SERVICE = "executor"
#: Longest any attempt runs, whatever its deadline says (``SWITCHYARD_MAX_STEP_TIMEOUT_S``).
DEFAULT_MAX_ATTEMPT_S: float = Settings.model_fields["max_step_timeout_s"].default
DEFAULT_MAX_IN_FLIGHT = 2_000
#: How long a batch waits for its quick actions, so no-op steps leave in the same transaction.
QUICK_WAIT_S = 0.003
#: Poll timeout while attempts are running, so results leave soon after they complete.
BUSY_POLL_S = 0.005
#: Largest identity fields a command may carry (characters): each is echoed in its result.
IDENTITY_LIMITS = {"run_id": 128, "step_id": 64, "correlation_id": 512, "idempotency_key": 1024}


@dataclass(slots=True, eq=False)  # hashed by identity: a key of ExecutorProcessor._pending
class _InFlight:
    offset: int
    command: StepCommand | None  # None: dead-lettered in the transaction that consumed it
    started: float
    sent: bool = False
    key: bytes | None = None  # the command's Kafka key, for a dead letter of its result
    # Set on the event loop's thread when the attempt ends (then the entry is queued in
    # ExecutorProcessor._finished): its StepResult, or what the task raised.
    result: StepResult | None = None
    error: BaseException | None = None


@dataclass
class _PartitionWork:
    entries: deque[_InFlight] = field(default_factory=deque)


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
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
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
        self.secrets: SecretResolver | None = None  # None: execute_command's default (environment)
        self.max_in_flight = max_in_flight
        self._ready = ready
        self._work: dict[tuple[str, int], _PartitionWork] = {}
        # The entries still running, apart from the sent ones waiting behind them in ``_work``
        # (a long attempt holds every later entry of its partition): what each poll looks at.
        self._pending: dict[_InFlight, tuple[str, int]] = {}
        # Entries whose attempt ended, appended on the loop's thread, drained by _publish (deque
        # appends and pops are atomic: the queue needs no lock and wakes nobody).
        self._finished: deque[_InFlight] = deque()
        self._consumer: Consumer | None = None
        self._paused: list[TopicPartition] = []
        self.loop = asyncio.new_event_loop()
        self.attempts = InFlightAttempts(self.loop)
        self._loop_thread = threading.Thread(
            target=self.loop.run_forever, name="executor-actions", daemon=True
        )
        self._loop_thread.start()

    def bind(self, consumer: Consumer) -> None:
        self._consumer = consumer

    def poll_timeout(self) -> float | None:
        """Poll briefly while attempts run, so their results are published as soon as they finish."""
        return BUSY_POLL_S if self.in_flight() else None

    def in_flight(self) -> int:
        return len(self._pending)

    # --- Processor protocol ------------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        if self._ready is not None:
            self._ready.set()

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        """Forget the partitions' running attempts: the new owner runs them again from the committed
        offset (their tasks finish here, unpublished)."""
        for tp in partitions:
            self._work.pop((tp.topic, tp.partition), None)
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._pending = {e: key for e, key in self._pending.items() if key not in revoked}
        self._paused = [
            p
            for p in self._paused
            if (p.topic, p.partition) not in {(tp.topic, tp.partition) for tp in partitions}
        ]

    def tick(self, out: Outbox) -> None:
        """Publish the results that completed since the last transaction; resume when drained."""
        self._publish(out)
        if self._paused and self.in_flight() < self.max_in_flight // 2 and self._consumer is not None:
            self._consumer.resume(self._paused)
            self._paused = []

    def on_abort(self) -> None:
        """The consumer rewinds to the committed offsets and the commands come again: forget every
        running attempt (they finish unpublished) and let the redelivered commands run anew."""
        self._work.clear()
        self._pending.clear()

    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        submitted: list[_InFlight] = []
        now = time.monotonic()
        for msg in messages:
            key = (msg.topic() or "", msg.partition() or 0)
            command = self._accept(msg, out)
            entry = _InFlight(msg.offset() or 0, command, now, sent=command is None, key=_raw_key(msg))
            self._work.setdefault(key, _PartitionWork()).entries.append(entry)
            if command is not None:
                self._pending[entry] = key
                submitted.append(entry)
        if submitted:
            # One hop to the loop's thread for the whole batch; back once its quick actions ended.
            # The wait is bounded here too: an action that blocks the loop's thread must not hold
            # the consumer (its attempts' results then come in a later transaction).
            batch = asyncio.run_coroutine_threadsafe(self._start(submitted), self.loop)
            concurrent.futures.wait((batch,), timeout=QUICK_WAIT_S)
        self._publish(out)
        if self.in_flight() >= self.max_in_flight and self._consumer is not None and not self._paused:
            self._paused = [TopicPartition(t, p) for (t, p) in self._work]
            self._consumer.pause(self._paused)
            log.info("executor saturated: partitions paused", extra={"in_flight": self.in_flight()})

    def poison(self, msg: Message, out: Outbox, kind: str, message: str) -> None:
        """Dead-letter one command whatever it is: the transactional loop's hook for a record it
        isolated as the cause of a failing batch (services.bus.poison)."""
        if not self._dead_letter(msg, out, kind, message, _header_identity(msg)):
            raise RuntimeError("the dead letter could not be written")  # the loop writes its own

    # --- internals ---------------------------------------------------------------------------
    async def _start(self, entries: list[_InFlight]) -> None:
        """Start one task per attempt; return when all ended or after ``QUICK_WAIT_S``, so that
        no-op steps leave in the transaction that consumed their commands."""
        loop = asyncio.get_running_loop()
        tasks = []
        for entry in entries:
            assert entry.command is not None
            task = loop.create_task(self._run(entry.command))
            task.add_done_callback(lambda t, e=entry: self._ended(e, t))  # type: ignore[misc]
            tasks.append(task)
        await asyncio.wait(tasks, timeout=QUICK_WAIT_S)

    def _ended(self, entry: _InFlight, task: asyncio.Task[StepResult]) -> None:
        """On the loop's thread: record the attempt's outcome and queue it for the Kafka thread."""
        if task.cancelled():
            entry.error = asyncio.CancelledError()
        elif (exc := task.exception()) is not None:
            entry.error = exc
        else:
            entry.result = task.result()
        self._finished.append(entry)

    async def _run(self, command: StepCommand) -> StepResult:
        task = asyncio.current_task()
        assert task is not None
        action = self.registry.get(command["action"])
        entry = self.attempts.add(
            command, task, cancellable=getattr(action, "cancellable", True) is not False
        )
        try:
            return await execute_command(
                self.registry,
                command,
                executor_id=self.executor_id,
                guardrails=self.guardrails,
                max_attempt_s=self.max_attempt_s,
                cancelled=entry.cancelled_because,
                secrets=self.secrets,
            )
        finally:
            self.attempts.discard(entry)

    def _accept(self, msg: Message, out: Outbox) -> StepCommand | None:
        """The decoded command to run, or None once it is dead-lettered; never raises but the
        transaction's own Kafka errors."""
        try:
            return self._decode(msg, out)
        except KafkaException:
            raise
        except Exception as exc:  # a bug of ours must not stop the loop
            log.exception("command could not be accepted", extra={"offset": msg.offset()})
            self._dead_letter(
                msg, out, "executor_error", f"{type(exc).__name__}: {exc}", _header_identity(msg)
            )
            return None

    def _publish(self, out: Outbox) -> None:
        """Produce completed results; commit each partition up to its oldest running command."""
        now = time.monotonic()
        finished = self._finished
        while finished:
            entry = finished.popleft()
            where = self._pending.pop(entry, None)
            if where is None:  # forgotten on abort or revocation: its command comes again
                continue
            topic, partition = where
            command = entry.command
            assert command is not None
            self._send_result(out, topic, partition, entry, command)
            entry.sent = True
            entry.command = entry.result = None  # a sent entry may wait behind a long attempt
            entry.error = None
            metrics.HANDLER_SECONDS.labels(
                SERVICE, "StepCommand", tenant_label(self.guardrails, command["tenant"])
            ).observe(now - entry.started)
        for (topic, partition), work in self._work.items():
            while work.entries and work.entries[0].sent:
                last = work.entries.popleft()
                if not work.entries:
                    out.commit_position(topic, partition, last.offset + 1)
            if work.entries:
                out.commit_position(topic, partition, work.entries[0].offset)

    def _send_result(
        self, out: Outbox, topic: str, partition: int, entry: _InFlight, command: StepCommand
    ) -> None:
        """Produce the attempt's result. What cannot be encoded or does not fit becomes a failed
        result that can; what cannot be written at all becomes a dead letter."""
        if entry.result is not None:
            result = entry.result
        else:  # execute_command is total; a bug of ours (or a stray cancel) must not stop the loop
            crash = entry.error or RuntimeError("the attempt ended without a result")
            log.error(
                "attempt crashed", exc_info=crash, extra=logs.ids(command["tenant"], command["run_id"], None)
            )
            result = _failed(
                command, self.executor_id, "executor_error", f"{type(crash).__name__}: {crash}", True
            )
        headers = clients.headers_for(command["tenant"], command["run_id"], command["correlation_id"])
        for _ in range(3):
            try:
                value = serde.encode_inbox("StepResult", result)
            except Exception as exc:
                result = _failed(
                    command,
                    self.executor_id,
                    "executor_error",
                    f"the result could not be encoded: {type(exc).__name__}: {exc}",
                    False,
                )
                continue
            try:
                out.send(
                    self.topics.inbox,
                    value,
                    key=command["run_id"],
                    partition=command["reply_partition"],
                    headers=headers,
                )
                return
            except RecordTooLarge as exc:
                result = _failed(
                    command,
                    self.executor_id,
                    "output_too_large",
                    f"the step result would be {exc.size} bytes; the most a record may be is {exc.limit}",
                    False,
                )
        where = Message(topic=topic, partition=partition, offset=entry.offset, key=entry.key, value=None)
        self._dead_letter(
            where,
            out,
            "executor_error",
            "the step result could not be written, not even as a failure",
            _Identity(command["tenant"], command["run_id"], command["correlation_id"]),
            command=command,
        )

    def _decode(self, msg: Message, out: Outbox) -> StepCommand | None:
        try:
            command = records.decode_step_command(msg.value())
        except serde.ContractError as exc:
            self._dead_letter(msg, out, exc.kind, exc.message, _header_identity(msg))
            return None
        problem = _implausible(command)
        if problem is not None:
            self._dead_letter(
                msg,
                out,
                "invalid_field",
                problem,
                _Identity(command["tenant"], command["run_id"], command["correlation_id"]),
                command=command,
            )
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
        command: StepCommand | None = None,
    ) -> bool:
        """One bounded dead letter; without the copy of the original if that failed. False if
        neither could be written."""
        tenant, run_id, correlation_id = bounded_identity(
            identity.tenant, identity.run_id, identity.correlation_id
        )
        for keep_original in (True, False):
            try:
                record = encode_dead_letter(
                    SERVICE,
                    kind,
                    message if keep_original else f"{message} (original not kept: it did not fit)",
                    int(time.time() * 1000),
                    topic=msg.topic(),
                    partition=msg.partition(),
                    offset=msg.offset(),
                    key=msg.key() if keep_original else None,
                    value=msg.value() if keep_original else None,
                    tenant=tenant,
                    correlation_id=correlation_id,
                    run_id=run_id,
                    step_id=command["step_id"] if command else None,
                    attempt=command["attempt"] if command else None,
                    max_bytes=out.max_record_bytes,
                )
                out.send(
                    self.topics.dlq,
                    record,
                    key=msg.key() if keep_original else tenant,
                    headers=clients.headers_for(tenant, run_id, correlation_id),
                )
                break
            except KafkaException:
                raise
            except Exception:
                if keep_original:
                    continue
                log.exception(
                    "dead letter could not be written", extra=logs.ids(tenant, run_id, correlation_id)
                )
                return False
        metrics.DLQ_RECORDS.labels(
            SERVICE, kind, tenant_label(self.guardrails, tenant or "") or "unknown"
        ).inc()
        log.warning(
            "command dead-lettered",
            extra=logs.ids(
                tenant,
                run_id,
                correlation_id,
                error_kind=kind,
                error_message=bounded_text(message, 1000),
                partition=f"{msg.topic()}[{msg.partition()}]@{msg.offset()}",
            ),
        )
        return True

    def close(self) -> None:
        """Release what actions hold on the event loop, then stop and close it."""
        if self.loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(_cancel_running(), self.loop).result(30)
            asyncio.run_coroutine_threadsafe(self.registry.aclose(), self.loop).result(30)
            asyncio.run_coroutine_threadsafe(self.loop.shutdown_asyncgens(), self.loop).result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join(30)
            self.loop.close()


async def _cancel_running(grace_s: float = 10.0) -> None:
    """Cancel the attempts still running on the loop and let them unwind (their commands are
    redelivered to the partitions' next owner), so no task is destroyed pending when it closes."""
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=grace_s)


def _raw_key(msg: Message) -> bytes | None:
    key = msg.key()
    return key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key


def _implausible(command: StepCommand) -> str | None:
    """Why a command's identity cannot be one the router wrote, or None. Each of these fields is
    echoed in the result (and its headers): a forged command must not make that unwritable."""
    return implausible_identity(command, IDENTITY_LIMITS)


def _failed(command: StepCommand, executor_id: str, kind: str, message: str, retryable: bool) -> StepResult:
    """A failed StepResult with no output, every text bounded."""
    now = int(time.time() * 1000)
    return {
        "run_id": command["run_id"],
        "tenant": command["tenant"],
        "step_id": command["step_id"],
        "attempt": command["attempt"],
        "status": "failed",
        "output_json": None,
        "error_kind": kind,
        "error_message": bounded_text(message, 4000),
        "retryable": retryable,
        "started_at": now,
        "finished_at": now,
        "correlation_id": command["correlation_id"],
        "executor_id": bounded_text(executor_id, 256),
        "retry_after_ms": None,
    }
