"""Restore runs in the core's loop, not in the rebalance callback, within the configured deadline.

The changelog reader (:func:`services.router.restore.read_changelog`) is replaced by one that
replays records a first core wrote, so no broker is needed.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from services.bus.poison import blames_records
from services.config import Settings
from services.router import core as core_module
from services.router.restore import Load
from services.router.state import RunStatus
from tests.unit.router.fakes import LINEAR, TOPICS, Harness


class Changelog:
    """Stands in for the changelog reader: records per partition, calls kept, failures on demand."""

    def __init__(self, records: list[tuple[bytes | None, bytes | None]]) -> None:
        self.records = records
        self.calls: list[tuple[list[int], float]] = []
        self.fail = 0

    def __call__(self, settings: Settings, numbers: list[int], load: Load, deadline_s: float) -> None:
        self.calls.append((numbers, deadline_s))
        if self.fail:
            self.fail -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "restore did not finish"))
        for key, value in self.records:
            load(0, key, value)


def written(restore_deadline_s: float = 7.0) -> tuple[Harness, Harness, str, Changelog]:
    """A first core that started a run, and a second one about to be assigned its partition."""
    first = Harness()
    run_id = first.start("k")
    records: list[tuple[bytes | None, bytes | None]] = []
    for sent in first.out.on(TOPICS.router_state):
        key = sent.key.encode() if isinstance(sent.key, str) else sent.key
        records.append((key, sent.value))
    second = Harness(restore_deadline_s=restore_deadline_s)
    del second.core.partitions[0]
    return first, second, run_id, Changelog(records)


def test_the_rebalance_callback_only_notes_the_partition_and_the_loop_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second, run_id, changelog = written()
    monkeypatch.setattr(core_module, "read_changelog", changelog)
    second.core.on_assigned([TopicPartition(TOPICS.inbox, 0)])
    assert changelog.calls == [] and 0 not in second.core.partitions  # nothing read in the callback
    second.core.tick(second.out)
    assert changelog.calls == [([0], 7.0)]
    assert second.core.partitions[0].runs[run_id] == first.state.runs[run_id]
    assert second.core.partitions[0].runs[run_id].status == RunStatus.RUNNING
    second.core.tick(second.out)
    assert len(changelog.calls) == 1  # once


def test_records_of_a_new_partition_are_applied_after_its_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    _, second, run_id, changelog = written()
    monkeypatch.setattr(core_module, "read_changelog", changelog)
    second.core.on_assigned([TopicPartition(TOPICS.inbox, 0)])
    second.feed(second.result(run_id, LINEAR_FIRST))
    assert changelog.calls and second.out.types(run_id)[0] == "step_succeeded"
    assert not second.out.dead_letters()  # the run was known when its result came


LINEAR_FIRST = next(iter(LINEAR.definition.steps)).id


def test_a_restore_past_its_deadline_raises_for_the_loop_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, second, run_id, changelog = written(restore_deadline_s=0.5)
    changelog.fail = 1
    monkeypatch.setattr(core_module, "read_changelog", changelog)
    second.core.on_assigned([TopicPartition(TOPICS.inbox, 0)])
    with pytest.raises(KafkaException) as raised:
        second.core.process([second.message(second.result(run_id, LINEAR_FIRST))], second.out)
    assert not blames_records(raised.value.args[0])  # the infrastructure's: abort, rewind, again
    second.core.on_abort()
    second.feed(second.result(run_id, LINEAR_FIRST))
    assert [c[1] for c in changelog.calls] == [0.5, 0.5]
    assert second.out.types(run_id)[0] == "step_succeeded"


def test_a_revoked_partition_is_not_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    _, second, _, changelog = written()
    monkeypatch.setattr(core_module, "read_changelog", changelog)
    second.core.on_assigned([TopicPartition(TOPICS.inbox, 0)])
    second.core.on_revoked([TopicPartition(TOPICS.inbox, 0)])
    second.core.tick(second.out)
    assert changelog.calls == [] and 0 not in second.core.partitions
