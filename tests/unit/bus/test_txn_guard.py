"""Error classes of the transaction API and the hang guard (no broker: errors are constructed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.bus.txn_guard import HANG_EXIT_CODE, Action, HangGuard, classify, retrying
from services.observability.metrics import REGISTRY


def error(*, fatal: bool = False, retriable: bool = False, abort: bool = False) -> KafkaError:
    return KafkaError(
        KafkaError._TIMED_OUT, "test", fatal=fatal, retriable=retriable, txn_requires_abort=abort
    )


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (error(retriable=True), Action.RETRY),
        (error(abort=True), Action.ABORT),
        (error(abort=True, retriable=True), Action.ABORT),  # must abort even if the call could repeat
        (error(fatal=True), Action.NEW_PRODUCER),
        (error(fatal=True, abort=True), Action.NEW_PRODUCER),
        (error(), Action.ABORT),
        (None, Action.ABORT),
    ],
)
def test_classify(err: KafkaError | None, expected: Action) -> None:
    assert classify(err) is expected


def test_retrying_repeats_retriable_errors_until_success() -> None:
    outcomes: list[Any] = [
        KafkaException(error(retriable=True)),
        KafkaException(error(retriable=True)),
        "done",
    ]
    timeouts: list[float] = []

    def call(timeout: float) -> str:
        timeouts.append(timeout)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return str(outcome)

    assert retrying(call, budget_s=30, what="commit_transaction", service="test") == "done"
    assert len(timeouts) == 3
    assert all(1.0 <= t <= 30 for t in timeouts)
    assert timeouts == sorted(timeouts, reverse=True)  # each call gets what is left of the budget


@pytest.mark.parametrize("err", [error(abort=True), error(fatal=True), error()])
def test_retrying_raises_non_retriable_errors_at_once(err: KafkaError) -> None:
    calls = 0

    def call(timeout: float) -> None:
        nonlocal calls
        calls += 1
        raise KafkaException(err)

    with pytest.raises(KafkaException) as raised:
        retrying(call, budget_s=30, what="send_offsets_to_transaction", service="test")
    assert raised.value.args[0] is err
    assert calls == 1


def test_retrying_gives_up_when_the_budget_is_spent() -> None:
    calls = 0

    def call(timeout: float) -> None:
        nonlocal calls
        calls += 1
        raise KafkaException(error(retriable=True))

    with pytest.raises(KafkaException):
        retrying(call, budget_s=0.2, what="commit_transaction", service="test")
    assert calls >= 2


def overdue_count(call: str) -> float:
    value = REGISTRY.get_sample_value(
        "switchyard_transaction_calls_overdue_total", {"service": "guard-test", "call": call}
    )
    return value or 0.0


def blocked_in(guard: HangGuard, call: str, release: threading.Event) -> threading.Thread:
    def run() -> None:
        with guard.watching(call):
            release.wait(10)

    worker = threading.Thread(target=run)
    worker.start()
    return worker


def test_guard_leaves_calls_that_return_in_time_alone() -> None:
    exits: list[int] = []
    before = overdue_count("commit_transaction")
    guard = HangGuard("guard-test", overdue_after_s=0.5, exit_after_s=1, exit=exits.append, tick_s=0.01)
    try:
        for _ in range(5):
            with guard.watching("commit_transaction"):
                time.sleep(0.02)
        time.sleep(0.1)  # ticks pass with no call in flight
    finally:
        guard.close()
    assert overdue_count("commit_transaction") == before
    assert exits == []


def test_guard_counts_an_overdue_call_once() -> None:
    exits: list[int] = []
    before = overdue_count("send_offsets_to_transaction")
    guard = HangGuard("guard-test", overdue_after_s=0.05, exit_after_s=60, exit=exits.append, tick_s=0.01)
    release = threading.Event()
    worker = blocked_in(guard, "send_offsets_to_transaction", release)
    try:
        wait_until(lambda: overdue_count("send_offsets_to_transaction") == before + 1)
        time.sleep(0.1)  # many more ticks while the same call stays blocked
    finally:
        release.set()
        worker.join()
        guard.close()
    assert overdue_count("send_offsets_to_transaction") == before + 1
    assert exits == []


def test_guard_exits_the_process_when_a_call_never_returns() -> None:
    exits: list[int] = []
    guard = HangGuard("guard-test", overdue_after_s=0.01, exit_after_s=0.1, exit=exits.append, tick_s=0.01)
    release = threading.Event()
    worker = blocked_in(guard, "abort_transaction", release)
    try:
        wait_until(lambda: exits == [HANG_EXIT_CODE])
    finally:
        release.set()
        worker.join()
        guard.close()
