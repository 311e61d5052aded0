"""How the transactional loop calls the producer's transaction API: error classes and a hang guard.

Two things live here, both about the broker or the client misbehaving, not about workflows:

* :func:`classify` maps a librdkafka error to what the loop must do next. librdkafka documents
  three classes: *retriable* (call the same operation again, e.g. a commit that timed out may
  still complete), *abortable* (``txn_requires_abort``: abort, rewind, start over) and *fatal*
  (the producer is unusable: make a new one, which fences the old epoch). Treating every error as
  abortable, as the loop first did, aborts commits that the coordinator had already decided to
  commit (the broker then logs "state is COMPLETE_COMMIT, but received transaction marker
  ABORT") and turns transient coordinator moves into rewinds.

* :class:`HangGuard` watches blocking transaction calls. librdkafka's
  ``send_offsets_to_transaction`` can block past its timeout when the group coordinator's
  broker handle died in a broker restart (librdkafka issues #5456 and #5511: the coordinator
  request waits for a broker state change, then re-queries at most once a second). After a
  broker restart this stalled the router's intake for good. The cure is in the loop
  (:mod:`services.bus.txloop` replaces a producer that lost its brokers instead of calling it
  again) and in the client configuration (``connections.max.idle.ms``, see
  :mod:`services.bus.clients`, so that a stuck request sees state changes; a metadata refresh
  from another thread, tried first, does not help). Those idle closes must not cost latency: the
  reconnect backoff is capped under half the idle time, or the first transaction after idle
  waits seconds for a reconnect (issue 17). ``send_offsets_to_transaction`` itself runs on a
  helper thread and is abandoned with its producer when it hangs (``TransactionalLoop._send_offsets``).
  The guard is the last resort for the other calls: a call that is
  overdue is logged and counted, and one that has not returned after ``exit_after_s`` means the
  process cannot make progress, so it exits (code 70) for its supervisor to restart it: a
  restart is safe (a new producer fences the old epoch), a silently wedged engine is not.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

from services.observability import metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

HANG_EXIT_CODE = 70  # EX_SOFTWARE: the process is wedged in a client call


class Action(enum.Enum):
    RETRY = "retry"  # call the same operation again
    ABORT = "abort"  # abort the transaction, rewind, start over
    NEW_PRODUCER = "new_producer"  # the producer is unusable (fenced, fatal)


def classify(error: KafkaError | None) -> Action:
    """What to do after a transactional call raised ``error``."""
    if error is None:
        return Action.ABORT
    if error.fatal():
        return Action.NEW_PRODUCER
    if error.txn_requires_abort():
        return Action.ABORT
    if error.retriable():
        return Action.RETRY
    return Action.ABORT


def kafka_error(exc: KafkaException) -> KafkaError | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, KafkaError) else None


def retrying(
    call: Callable[[float], T], *, budget_s: float, what: str, service: str, any_error: bool = False
) -> T:
    """Run ``call(timeout)`` again while it fails with a retriable error and budget is left.

    Abortable and fatal errors (and a retriable one once the budget is spent) propagate.
    ``any_error``: every Kafka error is retried within the budget — for reads without side effects,
    whose errors librdkafka does not flag retriable (``committed()`` raising ``NOT_COORDINATOR``
    while a group coordinator moves, which once ended a router's loop on a cluster)."""
    deadline = time.monotonic() + budget_s
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        try:
            return call(max(1.0, remaining))
        except KafkaException as exc:
            error = kafka_error(exc)
            attempt += 1
            retry = any_error or classify(error) is Action.RETRY
            if not retry or time.monotonic() >= deadline:
                raise
            metrics.TXN_RETRIES.labels(service, what).inc()
            log.warning(
                "transactional call failed with a retriable error; calling it again",
                extra={"service": service, "call": what, "error": str(error), "attempt": attempt},
            )
            time.sleep(min(1.0, 0.05 * 2**attempt))


class HangGuard:
    """Watches one loop's blocking calls from a daemon thread (see the module docstring)."""

    def __init__(
        self,
        service: str,
        *,
        overdue_after_s: float = 10.0,
        exit_after_s: float = 180.0,
        exit: Callable[[int], None] = os._exit,
        tick_s: float = 1.0,
    ) -> None:
        self.service = service
        self.overdue_after_s = overdue_after_s
        self.exit_after_s = exit_after_s
        self._exit = exit
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._call: tuple[str, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"{service}.hang-guard", daemon=True)
        self._thread.start()

    @contextmanager
    def watching(self, what: str) -> Iterator[None]:
        with self._lock:
            self._call = (what, time.monotonic())
        try:
            yield
        finally:
            with self._lock:
                self._call = None

    def close(self) -> None:
        self._stop.set()

    def give_up(self, what: str, why: str) -> None:
        """Exit now, as for a call blocked past ``exit_after_s``: the loop found itself wedged."""
        log.critical(
            "transactional client wedged; exiting so that the process is restarted",
            extra={"service": self.service, "call": what, "why": why},
        )
        self._exit(HANG_EXIT_CODE)

    def _watch(self) -> None:
        reported: float | None = None
        while not self._stop.wait(self._tick_s):
            with self._lock:
                call = self._call
            if call is None:
                continue
            what, since = call
            blocked = time.monotonic() - since
            if blocked >= self.exit_after_s:
                log.critical(
                    "transactional call has not returned; exiting so that the process is restarted",
                    extra={"service": self.service, "call": what, "blocked_s": round(blocked, 1)},
                )
                self._exit(HANG_EXIT_CODE)
                return
            if blocked >= self.overdue_after_s and reported != since:
                reported = since
                metrics.TXN_OVERDUE_CALLS.labels(self.service, what).inc()
                log.warning(
                    "transactional call overdue",
                    extra={"service": self.service, "call": what, "blocked_s": round(blocked, 1)},
                )
