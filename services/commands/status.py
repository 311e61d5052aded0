"""`switchyard status`: a live terminal view of lag, throughput, dead letters and per-tenant runs.

Two sources, used together when both are available:

* Kafka (``KAFKA_BOOTSTRAP_SERVERS``): lag of the engine's consumer groups computed from
  watermarks and committed offsets, write rates from sampled end offsets, DLQ size;
* the services' ``/metrics`` (``--metrics-url``, repeatable): records per second per service,
  dead letters by reason, in-flight and pending runs per tenant (and lag, when Kafka is not used).

Rates need two samples: every refresh compares with the previous one; ``--once`` takes two
samples ``--interval`` seconds apart, prints one snapshot and exits.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from services.bus.topics import Topics
from services.commands import options
from services.commands.text import add_row, console
from services.config import Settings, get_settings
from services.observability.lag import LagReader, all_groups

err = console(stderr=True)


@dataclass
class Snapshot:
    """What one sample saw. Keys are summed over partitions (and over services for metrics)."""

    at: float
    lag: dict[tuple[str, str], int] = field(default_factory=dict)  # (group, topic) -> records
    end_offsets: dict[str, int] = field(default_factory=dict)  # topic -> sum of end offsets
    records: dict[tuple[str, str], float] = field(default_factory=dict)  # (service, in|out) -> total
    dlq_by_reason: dict[tuple[str, str], float] = field(default_factory=dict)  # (service, reason)
    in_flight: dict[str, float] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def metrics_url(url: str) -> str:
    """Accept ``host:port``, ``http://host:port`` or a full ``/metrics`` URL."""
    if "://" not in url:
        url = "http://" + url
    path = url.partition("://")[2].partition("/")[2]
    return url if path else url.rstrip("/") + "/metrics"


def read_kafka(snapshot: Snapshot, reader: LagReader, prefix: str) -> None:
    rows = reader.read(all_groups(prefix))
    for row in rows:
        key = (row.group, row.topic)
        snapshot.lag[key] = snapshot.lag.get(key, 0) + row.lag
    seen: set[tuple[str, int]] = set()
    for row in rows:
        if (row.topic, row.partition) not in seen:
            seen.add((row.topic, row.partition))
            snapshot.end_offsets[row.topic] = snapshot.end_offsets.get(row.topic, 0) + row.end_offset
    dlq = Topics(prefix).dlq
    snapshot.end_offsets[dlq] = sum(reader.end_offsets([dlq]).values())
    snapshot.sources.append("kafka")


def read_metrics(snapshot: Snapshot, text: str, use_lag: bool) -> None:
    """Fold one ``/metrics`` page into ``snapshot``."""
    lag: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if s.name == "switchyard_transaction_records_total":
                key = (labels["service"], labels["direction"])
                snapshot.records[key] = snapshot.records.get(key, 0.0) + s.value
            elif s.name == "switchyard_dlq_records_total":
                key = (labels["service"], labels["reason"])
                snapshot.dlq_by_reason[key] = snapshot.dlq_by_reason.get(key, 0.0) + s.value
            elif s.name == "switchyard_runs_in_flight":
                snapshot.in_flight[labels["tenant"]] = snapshot.in_flight.get(labels["tenant"], 0.0) + s.value
            elif s.name == "switchyard_runs_pending":
                snapshot.pending[labels["tenant"]] = snapshot.pending.get(labels["tenant"], 0.0) + s.value
            elif s.name == "switchyard_consumer_lag" and use_lag:
                lag[(labels["group"], labels["topic"], labels["partition"])] = s.value
    for (group, topic, _), value in lag.items():
        snapshot.lag[(group, topic)] = snapshot.lag.get((group, topic), 0) + int(value)


def fetch(url: str, timeout_s: float = 3.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - operator-given URL
        return str(response.read().decode())


@dataclass
class Sampler:
    """Takes snapshots from Kafka (when ``reader`` is set) and/or metrics URLs."""

    prefix: str
    reader: LagReader | None
    urls: list[str]
    fetcher: Callable[[str], str] = fetch

    def sample(self) -> Snapshot:
        snapshot = Snapshot(at=time.monotonic())
        if self.reader is not None:
            try:
                read_kafka(snapshot, self.reader, self.prefix)
            except Exception as exc:
                snapshot.errors.append(f"kafka: {type(exc).__name__}: {exc}")
        for url in self.urls:
            try:
                read_metrics(snapshot, self.fetcher(url), use_lag=self.reader is None)
                snapshot.sources.append(url)
            except Exception as exc:
                snapshot.errors.append(f"{url}: {type(exc).__name__}: {exc}")
        return snapshot


def _rate(now: float, before: float | None, seconds: float) -> str:
    if before is None or seconds <= 0:
        return "-"
    return f"{max(0.0, now - before) / seconds:,.1f}"


def render(cur: Snapshot, prev: Snapshot | None, prefix: str, top: int = 20) -> Group:
    """The whole view as one rich renderable."""
    seconds = cur.at - prev.at if prev else 0.0
    parts: list[Table | Text] = []
    header = f"switchyard status · prefix {prefix} · sources: {', '.join(cur.sources) or 'none'}"
    parts.append(Text(header, style="bold"))

    lag = Table("group", "topic", "lag", "topic writes/s", title="Consumer lag", title_justify="left")
    rows = sorted(cur.lag.items(), key=lambda kv: (-kv[1], kv[0]))
    for (group, topic), value in rows[:top]:
        before = prev.end_offsets.get(topic) if prev else None
        written = _rate(cur.end_offsets.get(topic, 0), before, seconds) if topic in cur.end_offsets else "-"
        add_row(lag, group, topic, f"{value:,}", written, style="red" if value > 1000 else None)
    if len(rows) > top:
        add_row(lag, "…", f"{len(rows) - top} more", "", "")
    parts.append(lag)

    if cur.records:
        throughput = Table("service", "in/s", "out/s", title="Throughput (committed)", title_justify="left")
        for service in sorted({s for s, _ in cur.records}):
            cells = [
                _rate(
                    cur.records.get((service, d), 0.0),
                    prev.records.get((service, d)) if prev else None,
                    seconds,
                )
                for d in ("in", "out")
            ]
            add_row(throughput, service, *cells)
        parts.append(throughput)

    dlq_topic = Topics(prefix).dlq
    dlq = Table("dead letters", "count", "per s", title="DLQ", title_justify="left")
    if dlq_topic in cur.end_offsets:
        before = prev.end_offsets.get(dlq_topic) if prev else None
        add_row(
            dlq,
            dlq_topic,
            f"{cur.end_offsets[dlq_topic]:,}",
            _rate(cur.end_offsets[dlq_topic], before, seconds),
        )
    for (service, reason), count in sorted(cur.dlq_by_reason.items()):
        before_count = prev.dlq_by_reason.get((service, reason)) if prev else None
        add_row(dlq, f"{service}: {reason}", f"{count:,.0f}", _rate(count, before_count, seconds))
    parts.append(dlq)

    tenants = sorted(set(cur.in_flight) | set(cur.pending))
    if tenants:
        table = Table("tenant", "in flight", "pending", title="Runs per tenant", title_justify="left")
        for tenant in tenants:
            add_row(
                table, tenant, f"{cur.in_flight.get(tenant, 0):,.0f}", f"{cur.pending.get(tenant, 0):,.0f}"
            )
        parts.append(table)
    for error in cur.errors:
        parts.append(Text(f"! {error}", style="yellow"))  # Text: literal
    return Group(*parts)


def _reader(settings: Settings, use_kafka: bool | None) -> LagReader | None:
    if use_kafka is False:
        return None
    if not settings.kafka_bootstrap_servers:
        if use_kafka:
            err.print("[red]error:[/] --kafka needs KAFKA_BOOTSTRAP_SERVERS (`switchyard dev env`).")
            raise typer.Exit(2)
        return None
    return LagReader(settings, timeout_s=5.0)


def status(
    metrics_url_: list[str] = typer.Option(
        [],
        "--metrics-url",
        help="A service's metrics endpoint (host:port or URL); repeat for several services.",
    ),
    kafka: bool | None = typer.Option(
        None,
        "--kafka/--no-kafka",
        help="Compute lag from Kafka (default: when KAFKA_BOOTSTRAP_SERVERS is set).",
    ),
    prefix: str | None = typer.Option(None, help="Topic prefix (default: SWITCHYARD_TOPIC_PREFIX, else wf)."),
    interval: float = typer.Option(
        2.0,
        min=0.1,
        callback=options.finite_seconds,
        help="Seconds between refreshes (and between --once samples).",
    ),
    once: bool = typer.Option(
        False, "--once", help="Print one snapshot (two samples --interval apart) and exit."
    ),
    top: int = typer.Option(20, min=1, help="Most lag rows shown."),
) -> None:
    """Live view of consumer lag, throughput, dead letters and per-tenant in-flight/pending runs."""
    settings = get_settings()
    prefix = prefix or settings.topic_prefix
    reader = _reader(settings, kafka)
    urls = [metrics_url(u) for u in metrics_url_]
    if reader is None and not urls:
        err.print("[red]error:[/] nothing to read: set KAFKA_BOOTSTRAP_SERVERS or pass --metrics-url.")
        raise typer.Exit(2)
    sampler = Sampler(prefix, reader, urls)
    out = console()
    if once:
        first = sampler.sample()
        time.sleep(interval)
        cur = sampler.sample()
        out.print(render(cur, first, prefix, top))
        if not cur.sources:
            raise typer.Exit(1)
        return
    prev = sampler.sample()
    with Live(render(prev, None, prefix, top), console=out, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                cur = sampler.sample()
                live.update(render(cur, prev, prefix, top))
                prev = cur
        except KeyboardInterrupt:
            pass


def register(app: typer.Typer) -> None:
    """Add ``switchyard status`` to ``app``."""
    app.command("status")(status)
