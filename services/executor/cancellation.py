"""Cancelling in-flight attempts when the router gives up on them (run cancelled, run failed).

When the router cancels a run (an operator's ``cancel``) or fails it (another step failed, its
definition lost its trust), it writes a ``step_cancelled`` history event for every attempt still
running; when an attempt outlives its deadline plus grace it writes ``step_timed_out``. Until now
the executor never heard of either: a 300 s ``sleep`` of a cancelled run slept on.

:class:`InFlightAttempts` knows the attempts running on the executor's event loop, by run id.
:class:`CancellationWatcher` tails the events topic in a background thread — a plain consumer
with no consumer group (nothing is committed), assigned every partition from its end, reading
committed transactions only — and asks the registry to cancel the attempt an event names. The
attempt's task is cancelled on its event loop (``asyncio`` cancellation: the action sees
``CancelledError`` at its current ``await``, may clean up in ``finally``/``except`` and re-raise),
and its result is a failure of kind ``cancelled``, not retryable. The router ignores that result
(the attempt is no longer the running one): nothing is retried.

Actions opt out with a class attribute ``cancellable = False`` (an action that must not be
interrupted between two writes, say): such an attempt runs to its end and its result is ignored.

Cost: most events belong to runs this executor runs nothing of. Those are dropped on their
``run_id`` header (every record the router writes carries it) without being decoded; only events
of runs with an attempt in flight here are decoded (see :func:`cancel_request`).

What this does not cover: a command still waiting in the commands topic when its run is cancelled
runs when it is consumed (its result is then ignored), and events written while the executor was
down are not read back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.bus.fetch import consume_ready
from services.config import Settings
from services.contracts import records, serde
from services.contracts.records import RunEvent, StepCommand
from services.contracts.vocabulary import EventType
from services.observability import logs

log = logging.getLogger("services.executor")

#: History events that end a running attempt, whatever the executor is still doing with it.
CANCELLING_EVENTS = frozenset({EventType.STEP_CANCELLED, EventType.STEP_TIMED_OUT})
#: Longest the watcher's consumer blocks, so that stop() is prompt.
POLL_S = 0.2
#: Records taken per poll.
BATCH = 500
#: Budget of the start-up calls (topic metadata, watermarks).
START_BUDGET_S = 30.0


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """An attempt the router is done with, and why, in words an operator reads in the result."""

    run_id: str
    step_id: str
    attempt: int
    reason: str


@dataclass(slots=True)
class InFlight:
    """One running attempt: its task on the executor's event loop."""

    tenant: str
    run_id: str
    step_id: str
    attempt: int
    correlation_id: str
    task: asyncio.Task[Any]
    cancellable: bool
    reason: str | None = None  # set when a cancellation was asked for

    def cancelled_because(self) -> str | None:
        """Why the attempt was cancelled, or None when nobody asked (shutdown, a deadline)."""
        return self.reason


class InFlightAttempts:
    """The attempts running on one event loop, by run id. Written on the loop's thread, asked and
    cancelled from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._runs: dict[str, dict[tuple[str, int], InFlight]] = {}

    def add(self, command: StepCommand, task: asyncio.Task[Any], *, cancellable: bool) -> InFlight:
        """Register the attempt ``command`` describes, run by ``task``."""
        entry = InFlight(
            command["tenant"],
            command["run_id"],
            command["step_id"],
            command["attempt"],
            command["correlation_id"],
            task,
            cancellable,
        )
        with self._lock:
            self._runs.setdefault(entry.run_id, {})[(entry.step_id, entry.attempt)] = entry
        return entry

    def discard(self, entry: InFlight) -> None:
        with self._lock:
            attempts = self._runs.get(entry.run_id)
            if attempts is None or attempts.get((entry.step_id, entry.attempt)) is not entry:
                return
            del attempts[(entry.step_id, entry.attempt)]
            if not attempts:
                del self._runs[entry.run_id]

    def running(self, run_id: str) -> bool:
        """Whether an attempt of ``run_id`` runs here (the watcher's filter: one dict lookup)."""
        return run_id in self._runs

    def __len__(self) -> int:
        with self._lock:
            return sum(len(attempts) for attempts in self._runs.values())

    def cancel(self, request: CancelRequest) -> bool:
        """Cancel the attempt ``request`` names, if it runs here and lets itself be cancelled.
        Returns whether a cancellation was scheduled."""
        with self._lock:
            entry = self._runs.get(request.run_id, {}).get((request.step_id, request.attempt))
            if entry is None or entry.reason is not None:
                return False
            if entry.cancellable:
                entry.reason = request.reason
        identity = logs.ids(
            entry.tenant,
            entry.run_id,
            entry.correlation_id,
            step_id=entry.step_id,
            attempt=entry.attempt,
            reason=request.reason,
        )
        if not entry.cancellable:
            log.info("attempt not cancelled: its action opts out", extra=identity)
            return False
        self._loop.call_soon_threadsafe(entry.task.cancel, request.reason)
        log.info("attempt cancelled", extra=identity)
        return True


def _run_id_header(msg: Message) -> str | None:
    raw = msg.headers() or []
    pairs = list(raw.items()) if isinstance(raw, dict) else raw
    for name, value in pairs:
        if name == "run_id" and isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return None


def _reason(event: RunEvent) -> str:
    if event["type"] == EventType.STEP_TIMED_OUT:
        return "the router timed the attempt out (no result by its deadline)"
    detail = event.get("detail_json") or ""
    if '"run_failed"' in detail:
        return "the run failed (another step failed or the run could not go on)"
    return "the run was cancelled"


def cancel_request(msg: Message, running: Callable[[str], bool]) -> CancelRequest | None:
    """The cancellation one events-topic record asks for, or None. Records of runs with nothing
    running here (``running``) are not decoded; what cannot be decoded asks for nothing."""
    run_id = _run_id_header(msg)
    if run_id is None or not running(run_id):
        return None
    try:
        event = records.decode_run_event(msg.value())
    except serde.ContractError:
        return None
    if event["type"] not in CANCELLING_EVENTS or event["step_id"] is None or event["attempt"] is None:
        return None
    return CancelRequest(event["run_id"], event["step_id"], event["attempt"], _reason(event))


class CancellationWatcher:
    """Tails the events topic from its end and cancels the in-flight attempts events name."""

    def __init__(self, settings: Settings, topic: str, attempts: InFlightAttempts, *, instance: str) -> None:
        self.topic = topic
        self.attempts = attempts
        conf = settings.kafka_config()
        conf.update(
            {
                # librdkafka needs a group id even for assign(); nothing is ever committed under it.
                "group.id": f"{settings.topic_prefix}.executor-cancellation.{instance}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": False,
            }
        )
        self._consumer = Consumer(conf)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="executor-cancellation", daemon=True)
        self.seen = 0
        self.cancelled = 0

    def start(self) -> CancellationWatcher:
        """Assign every partition at its current end (so the watcher is positioned once this
        returns), then tail in the background."""
        metadata = self._consumer.list_topics(self.topic, timeout=START_BUDGET_S)
        partitions = sorted(metadata.topics[self.topic].partitions)
        assignment = []
        for partition in partitions:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout=START_BUDGET_S
            )
            assignment.append(TopicPartition(self.topic, partition, high))
        self._consumer.assign(assignment)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = consume_ready(self._consumer, BATCH, POLL_S)
            except KafkaException as exc:  # the broker may come back; the executor goes on
                log.warning("cancellation watcher: consume failed", extra={"error": str(exc)})
                self._stop.wait(1.0)
                continue
            for msg in messages:
                if msg.error() is not None:
                    continue
                self.seen += 1
                try:
                    request = cancel_request(msg, self.attempts.running)
                    if request is not None and self.attempts.cancel(request):
                        self.cancelled += 1
                except Exception:  # a bug of ours must not end cancellation for good
                    log.exception("cancellation watcher: event not handled")
