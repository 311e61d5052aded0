"""Lag arithmetic, group/topic mapping, the collector's series bookkeeping, and `status` rendering."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import generate_latest
from rich.console import Console

from services.commands.status import Sampler, Snapshot, metrics_url, read_metrics, render
from services.config import Settings
from services.observability import metrics
from services.observability.lag import (
    GroupSpec,
    LagCollector,
    LagReader,
    PartitionLag,
    all_groups,
    groups_for,
    lag_of,
    tenant_label,
)


def test_lag_of() -> None:
    assert lag_of(0, 10, 4) == 6
    assert lag_of(0, 10, None) == 10  # never committed: from the log start (auto.offset.reset=earliest)
    assert lag_of(5, 10, None) == 5
    assert lag_of(7, 10, 3) == 3  # committed before the retention start: from the log start
    assert lag_of(0, 10, 12) == 0


def test_groups_and_topics() -> None:
    groups = {g.group: g for g in all_groups("p")}
    assert set(groups) == {"p.router.core", "p.router.intake", "p.executor", "p.projector"}
    assert groups["p.router.core"].consumes("p.inbox")
    assert groups["p.router.intake"].consumes("p.tenant.acme.triggers")
    assert groups["p.router.intake"].consumes("p.control")
    assert not groups["p.router.intake"].consumes("px.tenant.acme.triggers")
    assert not groups["p.router.intake"].consumes("p.tenant.a.b.triggers")
    assert groups["p.executor"].consumes("p.commands") and not groups["p.executor"].consumes("p.events")
    assert groups["p.projector"].consumes("p.events")
    assert [g.group for g in groups_for("p", ["executor", "gate", "projector"])] == [
        "p.executor",
        "p.projector",
    ]
    assert tenant_label("p", "p.tenant.acme.triggers") == "acme"
    assert tenant_label("p", "p.inbox") == ""


class FakeReader(LagReader):
    def __init__(self, rounds: list[list[PartitionLag]]) -> None:
        self.rounds = rounds

    def read(self, groups: Sequence[GroupSpec]) -> list[PartitionLag]:
        if not self.rounds:
            raise ConnectionError("no broker")
        return self.rounds.pop(0)


def row(partition: int, end: int, committed: int | None, tenant: str = "acme") -> PartitionLag:
    return PartitionLag(
        "u.router.intake", f"u.tenant.{tenant}.triggers", partition, tenant, 0, end, committed
    )


def test_collector_publishes_and_removes_series() -> None:
    reader = FakeReader([[row(0, 10, 4), row(1, 3, None)], [row(0, 10, 10)]])
    collector = LagCollector(Settings(topic_prefix="u"), all_groups("u"), reader=reader)
    before_errors = metrics.LAG_COLLECTIONS.labels("error")._value.get()

    assert collector.collect_once() is not None and collector.collected.is_set()
    text = generate_latest(metrics.REGISTRY).decode()
    series = 'partition="0",tenant="acme",topic="u.tenant.acme.triggers"}'
    lag = 'switchyard_consumer_lag{group="u.router.intake",' + series
    assert f"{lag} 6.0" in text
    assert 'partition="1",tenant="acme",topic="u.tenant.acme.triggers"} 3.0' in text
    assert (
        'switchyard_topic_end_offset{partition="0",tenant="acme",topic="u.tenant.acme.triggers"} 10.0' in text
    )

    collector.collect_once()
    text = generate_latest(metrics.REGISTRY).decode()
    assert f"{lag} 0.0" in text
    assert 'partition="1",tenant="acme",topic="u.tenant.acme.triggers"' not in text  # gone: removed

    assert collector.collect_once() is None  # the reader fails: counted, series kept
    assert metrics.LAG_COLLECTIONS.labels("error")._value.get() == before_errors + 1
    collector.clear()
    assert "u.tenant.acme.triggers" not in generate_latest(metrics.REGISTRY).decode()


PAGE = """
# TYPE switchyard_transaction_records_total counter
switchyard_transaction_records_total{service="executor",direction="in"} 100.0
switchyard_transaction_records_total{service="executor",direction="out"} 200.0
# TYPE switchyard_dlq_records_total counter
switchyard_dlq_records_total{service="router.core",reason="upstream_down",tenant="acme"} 2.0
# TYPE switchyard_runs_in_flight gauge
switchyard_runs_in_flight{tenant="acme"} 3.0
# TYPE switchyard_runs_pending gauge
switchyard_runs_pending{tenant="acme"} 4.0
switchyard_runs_pending{tenant="zeta"} 1.0
# TYPE switchyard_consumer_lag gauge
switchyard_consumer_lag{group="wf.executor",topic="wf.commands",partition="0",tenant=""} 5.0
switchyard_consumer_lag{group="wf.executor",topic="wf.commands",partition="1",tenant=""} 7.0
"""


def test_status_reads_metrics_pages() -> None:
    snap = Snapshot(at=0)
    read_metrics(snap, PAGE, use_lag=True)
    assert snap.records == {("executor", "in"): 100.0, ("executor", "out"): 200.0}
    assert snap.dlq_by_reason == {("router.core", "upstream_down"): 2.0}
    assert snap.in_flight == {"acme": 3.0} and snap.pending == {"acme": 4.0, "zeta": 1.0}
    assert snap.lag == {("wf.executor", "wf.commands"): 12}
    other = Snapshot(at=0)
    read_metrics(other, PAGE, use_lag=False)
    assert other.lag == {}


def test_status_renders_rates_between_two_samples() -> None:
    pages = iter([PAGE, PAGE.replace("100.0", "150.0").replace("200.0", "260.0")])
    sampler = Sampler("wf", None, ["http://x/metrics"], fetcher=lambda url: next(pages))
    first = sampler.sample()
    second = sampler.sample()
    second.at = first.at + 2.0
    console = Console(width=120, record=True)
    console.print(render(second, first, "wf"))
    text = console.export_text()
    assert "sources: http://x/metrics" in text
    assert "wf.executor" in text and "12" in text
    assert "25.0" in text and "30.0" in text  # executor in/s and out/s
    assert "router.core: upstream_down" in text
    assert "zeta" in text


def test_status_reports_unreachable_sources() -> None:
    def boom(url: str) -> str:
        raise OSError("connection refused")

    snap = Sampler("wf", None, ["http://x/metrics"], fetcher=boom).sample()
    assert snap.sources == [] and snap.errors == ["http://x/metrics: OSError: connection refused"]


def test_metrics_url() -> None:
    assert metrics_url("router:9400") == "http://router:9400/metrics"
    assert metrics_url("http://router:9400/") == "http://router:9400/metrics"
    assert metrics_url("https://h/custom") == "https://h/custom"
