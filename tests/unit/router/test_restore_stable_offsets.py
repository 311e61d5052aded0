"""The restore's wait for the previous owner's transaction, over a fake admin client (no I/O):
pending offsets are waited out, a moving coordinator is retried, and the deadline is the
infrastructure's error (the loop rewinds and restores again), never the records' fault."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.router import restore


@dataclass
class _Offset:
    """What the admin client lists per partition: the fields the restore reads."""

    partition: int
    error: KafkaError | None


@dataclass
class _Listing:
    topic_partitions: list[_Offset]


@dataclass
class _FakeAdmin:
    """Answers ``list_consumer_group_offsets`` from a script: an exception, or partition errors."""

    script: Iterator[Any]
    calls: list[bool] = field(default_factory=list)

    def list_consumer_group_offsets(self, request: Any, require_stable: bool, request_timeout: float) -> Any:
        self.calls.append(require_stable)
        answer = next(self.script)
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        if isinstance(answer, BaseException):
            future.set_exception(answer)
        else:
            future.set_result(_Listing([_Offset(0, KafkaError(answer) if answer is not None else None)]))
        return {request[0]: future}


@pytest.fixture(autouse=True)
def _no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(restore, "UNSTABLE_RETRY_S", 0.0)


def test_pending_offsets_are_waited_out_and_a_moving_coordinator_retried() -> None:
    admin = _FakeAdmin(
        iter(
            [
                KafkaException(KafkaError(KafkaError.NOT_COORDINATOR)),
                KafkaError.UNSTABLE_OFFSET_COMMIT,
                KafkaException(KafkaError(KafkaError.UNSTABLE_OFFSET_COMMIT)),
                None,
            ]
        )
    )
    restore.wait_for_stable_offsets(admin, "p.router.core", "p.inbox", [0], time.monotonic() + 30, 30)  # type: ignore[arg-type]
    assert admin.calls == [True, True, True, True]  # always asked for stable offsets


def test_offsets_held_past_the_deadline_are_the_infrastructures_error() -> None:
    admin = _FakeAdmin(iter([KafkaError.UNSTABLE_OFFSET_COMMIT] * 1000))
    with pytest.raises(KafkaException) as raised:
        restore.wait_for_stable_offsets(admin, "g", "p.inbox", [0, 2], time.monotonic() + 0.05, 7)  # type: ignore[arg-type]
    error = raised.value.args[0]
    assert error.code() == KafkaError._TIMED_OUT
    assert "within 7 s for partitions [0, 2]" in error.str()
    assert "previous owner's transaction did not end" in error.str()


def test_an_admin_call_that_never_answers_ends_at_the_deadline() -> None:
    admin = _FakeAdmin(iter([concurrent.futures.TimeoutError()] * 1000))
    with pytest.raises(KafkaException) as raised:
        restore.wait_for_stable_offsets(admin, "g", "p.inbox", [1], time.monotonic() + 0.05, 3)  # type: ignore[arg-type]
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT
    assert "could not be read" in raised.value.args[0].str()
