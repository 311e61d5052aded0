"""The stall detector behind /readyz (services.observability.progress), with a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from services.observability.health import Health
from services.observability.metrics import REGISTRY
from services.observability.progress import BOARD, PartitionProgress, ProgressBoard, Stall, describe_stalls

P0, P1 = ("t.in", 0), ("t.in", 1)


@dataclass(frozen=True)
class Rec:
    _topic: str
    _partition: int
    _offset: int

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def batch(spans: dict[tuple[str, int], tuple[int, int]]) -> list[Rec]:
    """Records ``[first, next)`` of each partition."""
    return [Rec(t, p, o) for (t, p), (first, after) in spans.items() for o in range(first, after)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker(stall_after_s: float = 60.0, service: str = "svc.loop") -> tuple[PartitionProgress, Clock]:
    clock = Clock()
    progress = PartitionProgress(service, stall_after_s, clock)
    progress.assigned([P0, P1])
    return progress, clock


def test_records_without_commit_progress_stall_after_the_bound() -> None:
    progress, clock = tracker()
    progress.committed({P0: 10, P1: 0})
    progress.taking(batch({P0: (10, 11)}))
    clock.now += 59.9
    assert progress.stalls() == []
    assert progress.oldest_pending_s() == pytest.approx(59.9)
    clock.now += 0.2
    [stall] = progress.stalls()
    assert (stall.topic, stall.partition) == P0 and stall.for_s >= 60
    progress.committed({P0: 11})  # progress: the clock restarts
    progress.observe({P0: 11, P1: 0}, {P0: 30, P1: 0}, paused=())  # and more records wait
    assert progress.stalls() == []
    clock.now += 61
    [stall] = progress.stalls()  # records, and no progress since
    assert (stall.topic, stall.partition, stall.lag) == ("t.in", 0, 19)


def test_a_batch_read_again_after_a_failure_keeps_its_first_time() -> None:
    progress, clock = tracker()
    for _ in range(7):  # the same batch fails, is rewound and taken again, every 10 s
        progress.taking(batch({P0: (3, 9), P1: (0, 2)}))
        clock.now += 10
    assert [(s.topic, s.partition, round(s.for_s), s.lag) for s in progress.stalls()] == [
        ("t.in", 0, 70, 6),
        ("t.in", 1, 70, 2),
    ]


def test_a_caught_up_partition_never_stalls() -> None:
    progress, clock = tracker()
    progress.taking(batch({P0: (4, 5)}))
    progress.committed({P0: 5})
    progress.observe({P0: 5, P1: 0}, {P0: 5, P1: 0}, paused=())
    clock.now += 3600
    assert progress.stalls() == [] and progress.oldest_pending_s() == 0


def test_a_watermark_ahead_of_the_position_means_records_wait() -> None:
    progress, clock = tracker()
    progress.committed({P1: 3})
    progress.observe({P0: 0, P1: 3}, {P0: 0, P1: 9}, paused=())  # never consumed, 6 waiting
    clock.now += 61
    [stall] = progress.stalls()
    assert (stall.topic, stall.partition, stall.lag) == ("t.in", 1, 6)
    assert "t.in[1] for 61 s, lag 6" in describe_stalls([stall])["svc.loop"]


def test_paused_partitions_are_not_stalls_and_restart_their_clock() -> None:
    progress, clock = tracker()
    progress.committed({P0: 2})
    progress.taking(batch({P0: (2, 3)}))
    progress.observe({P0: 2}, {P0: 50}, paused=[P0])  # throttled: backlog left in the topic on purpose
    clock.now += 600
    assert progress.stalls() == [] and progress.oldest_pending_s() == 0
    progress.observe({P0: 2}, {P0: 50}, paused=[P0])
    progress.observe({P0: 2}, {P0: 50}, paused=[])  # resumed: the clock starts at the resume
    clock.now += 30
    assert progress.stalls() == []
    clock.now += 31
    assert len(progress.stalls()) == 1


def test_partitions_the_processor_holds_are_not_stalls() -> None:
    progress, clock = tracker()
    progress.committed({P0: 7})
    progress.taking(batch({P0: (7, 12)}))
    for _ in range(10):  # a step runs for 5 minutes; each transaction commits P0 at its offset
        clock.now += 30
        progress.held([P0])
        progress.committed({P0: 7})
        progress.observe({P0: 12}, {P0: 15}, paused=())  # and records keep waiting behind it
    assert progress.stalls() == []
    clock.now += 61  # then the loop stops completing transactions
    assert len(progress.stalls()) == 1


def test_revoked_partitions_are_forgotten() -> None:
    progress, clock = tracker()
    progress.taking(batch({P0: (0, 1), P1: (0, 1)}))
    progress.revoked([P0])
    clock.now += 100
    assert [(s.topic, s.partition) for s in progress.stalls()] == [P1]


def test_readiness_fails_with_the_stalled_service_and_partitions() -> None:
    board = ProgressBoard()
    progress, clock = tracker(service="router.core")
    other, _ = tracker(service="executor")
    board.register(progress)
    board.register(other)
    health = Health(progress=board)
    health.service("router").ready.set()
    health.service("executor").ready.set()
    assert health.readiness()[0]

    progress.taking(batch({P1: (0, 1)}))
    clock.now += 75
    ok, report = health.readiness()
    assert not ok
    assert report["progress"]["ok"] is False
    detail = report["progress"]["stalled"]["router.core"]
    assert "1 partition(s) without commit progress" in detail and "t.in[1] for 75 s, lag 1" in detail
    assert "executor" not in report["progress"]["stalled"]

    assert Health(progress=board, services={"executor": health.services["executor"]}).readiness()[0]
    board.unregister(progress)
    assert health.readiness()[0]


def test_the_gauges_read_the_process_board_at_scrape_time() -> None:
    progress, clock = tracker(stall_after_s=10, service="test.gauges")
    BOARD.register(progress)
    try:
        labels = {"service": "test.gauges"}
        assert REGISTRY.get_sample_value("switchyard_partitions_stalled", labels) == 0
        progress.taking(batch({P0: (0, 1), P1: (0, 1)}))
        clock.now += 12
        assert REGISTRY.get_sample_value("switchyard_partitions_stalled", labels) == 2
        assert REGISTRY.get_sample_value("switchyard_partition_progress_age_seconds", labels) == 12
    finally:
        BOARD.unregister(progress)
    assert REGISTRY.get_sample_value("switchyard_partitions_stalled", {"service": "test.gauges"}) == 0


def test_stall_description() -> None:
    stall = Stall("router.intake", "t.tenant.a.triggers", 2, 90.4, None)
    assert describe_stalls([stall]) == {
        "router.intake": "1 partition(s) without commit progress while they have records: "
        "t.tenant.a.triggers[2] for 90 s"
    }
