"""Generate the Grafana dashboards of deploy/grafana/dashboards/ (run it after editing; commit the JSON).

    python deploy/grafana/build_dashboards.py          # write the JSON files
    python deploy/grafana/build_dashboards.py --check  # exit 1 when the files are out of date

Two dashboards: ``switchyard-overview`` (the whole engine) and ``switchyard-tenant`` (one or more
tenants, chosen with the ``tenant`` template variable). Lag series are exported by every replica
that runs a group's service, so lag queries de-duplicate with ``max by (group, topic, partition,
tenant)`` first. tests/unit/observability checks that every expression only uses exported metrics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "prometheus"}
LAG = "max by (group, topic, partition, tenant) (switchyard_consumer_lag{sel})"


def q(expr: str, legend: str) -> dict[str, Any]:
    return {"expr": expr, "legendFormat": legend}


def quantiles(metric: str, by: str, sel: str = "", window: str = "5m") -> list[dict[str, Any]]:
    """p50 and p99 of a histogram, by the labels ``by``."""
    rate = f"sum by ({by}, le) (rate({metric}_bucket{sel}[{window}]))"
    legend = " ".join("{{" + label.strip() + "}}" for label in by.split(","))
    return [q(f"histogram_quantile({p}, {rate})", f"p{int(p * 100)} {legend}") for p in (0.5, 0.99)]


class Board:
    """Lays panels out on Grafana's 24-column grid, two (or three) per row."""

    def __init__(self) -> None:
        self.panels: list[dict[str, Any]] = []
        self.y = 0
        self.x = 0
        self.row_h = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "type": "row",
                "title": title,
                "collapsed": False,
                "id": len(self.panels) + 1,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "panels": [],
            }
        )
        self.y += 1

    def panel(
        self,
        title: str,
        targets: list[dict[str, Any]],
        unit: str = "short",
        w: int = 12,
        h: int = 8,
        kind: str = "timeseries",
        description: str = "",
    ) -> None:
        if self.x + w > 24:
            self._newline()
        for i, target in enumerate(targets):
            target.setdefault("refId", chr(ord("A") + i))
            target["datasource"] = DS
        self.panels.append(
            {
                "type": kind,
                "title": title,
                "description": description,
                "id": len(self.panels) + 1,
                "datasource": DS,
                "gridPos": {"h": h, "w": w, "x": self.x, "y": self.y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
                "targets": targets,
            }
        )
        self.x += w
        self.row_h = max(self.row_h, h)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0


def dashboard(uid: str, title: str, board: Board, variables: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "tags": ["switchyard"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "panels": board.panels,
    }


def overview() -> dict[str, Any]:
    b = Board()
    b.row("Queues and throughput")
    b.panel(
        "Consumer lag by group",
        [q(f"sum by (group) ({LAG.format(sel='')})", "{{group}}")],
        description="Records between each group's committed offset and the log end, all partitions.",
    )
    b.panel(
        "Consumer lag: top partitions",
        [q(f"topk(10, {LAG.format(sel='')})", "{{group}} {{topic}}[{{partition}}]")],
    )
    b.panel(
        "Records per second by service",
        [
            q(
                "sum by (service, direction) (rate(switchyard_transaction_records_total[1m]))",
                "{{service}} {{direction}}",
            )
        ],
        unit="ops",
    )
    b.panel(
        "Topic write rate",
        [
            q(
                "sum by (topic) (max by (topic, partition) (deriv(switchyard_topic_end_offset[2m])))",
                "{{topic}}",
            )
        ],
        unit="ops",
        description="Growth of the log end offsets of the consumed topics (triggers, inbox, …).",
    )
    b.row("Latency")
    b.panel(
        "Handler latency by service (p50, p99)", quantiles("switchyard_handler_seconds", "service"), unit="s"
    )
    b.panel("Action latency (p50, p99)", quantiles("switchyard_action_seconds", "action"), unit="s")
    b.panel(
        "Transaction commit latency (p50, p99)",
        quantiles("switchyard_transaction_seconds", "service"),
        unit="s",
    )
    b.panel(
        "Transaction aborts, producer replacements, overdue calls per second",
        [
            q("sum by (service) (rate(switchyard_transaction_aborts_total[5m]))", "aborted {{service}}"),
            q(
                "sum by (service) (rate(switchyard_transaction_producer_replaced_total[5m]))",
                "producer replaced {{service}}",
            ),
            q(
                "sum by (service, call) (rate(switchyard_transaction_calls_overdue_total[5m]))",
                "overdue {{call}} {{service}}",
            ),
        ],
        unit="ops",
    )
    b.panel(
        "Stalled partitions, poison records, processor errors",
        [
            q("max by (service) (switchyard_partitions_stalled)", "stalled partitions {{service}}"),
            q(
                "sum by (service) (increase(switchyard_poison_records_total[5m]))",
                "poison records {{service}}",
            ),
            q(
                "sum by (service, stage) (increase(switchyard_processor_errors_total[5m]))",
                "processor errors ({{stage}}) {{service}}",
            ),
        ],
        w=24,
        description="Stalled: records to process and no commit progress for SWITCHYARD_STALL_AFTER_S "
        "(/readyz names the partitions). Poison records: isolated by the poison-batch guard and "
        "dead-lettered (poison_record). Processor errors: exceptions a processor raised in a "
        "transaction (aborted and retried; the loop goes on).",
    )
    b.row("Runs")
    b.panel("Active runs by state", [q("sum by (state) (switchyard_runs_by_state)", "{{state}}")])
    b.panel(
        "Runs started and finished per second",
        [
            q("sum(rate(switchyard_runs_started_total[5m]))", "started"),
            q("sum by (state) (rate(switchyard_runs_finished_total[5m]))", "{{state}}"),
        ],
        unit="ops",
    )
    b.panel("In-flight runs per tenant", [q("sum by (tenant) (switchyard_runs_in_flight)", "{{tenant}}")])
    b.panel("Pending runs per tenant", [q("sum by (tenant) (switchyard_runs_pending)", "{{tenant}}")])
    b.row("Failures and throttling")
    b.panel(
        "DLQ volume by reason (per 5m)",
        [
            q(
                "sum by (service, reason) (increase(switchyard_dlq_records_total[5m]))",
                "{{service}} {{reason}}",
            )
        ],
    )
    b.panel(
        "Step retries per second",
        [q("sum by (tenant, workflow) (rate(switchyard_step_retries_total[5m]))", "{{tenant}} {{workflow}}")],
        unit="ops",
    )
    b.panel(
        "Throttled time per tenant",
        [
            q(
                "sum by (tenant, reason) (rate(switchyard_throttled_seconds_total[5m]))",
                "{{tenant}} {{reason}}",
            )
        ],
        unit="percentunit",
        description="Fraction of time the tenant's trigger partitions were paused by intake backpressure.",
    )
    b.panel(
        "Triggers by outcome",
        [q("sum by (outcome) (rate(switchyard_triggers_total[5m]))", "{{outcome}}")],
        unit="ops",
    )
    b.panel(
        "Stale step results",
        [q("sum by (reason) (rate(switchyard_stale_results_total[5m]))", "{{reason}}")],
        unit="ops",
    )
    b.row("Projector and router")
    b.panel(
        "Projector lag",
        [q("max by (partition) (switchyard_projector_lag_seconds)", "events[{{partition}}]")],
        unit="s",
        description="Age of the newest event projected into PostgreSQL per partition (0 when caught up).",
    )
    b.panel(
        "Projector events per second",
        [
            q("sum by (outcome) (rate(switchyard_projector_events_total[5m]))", "{{outcome}}"),
            q("sum by (reason) (rate(switchyard_projector_rejects_total[5m]))", "rejected {{reason}}"),
        ],
        unit="ops",
    )
    b.panel(
        "Projector batch latency (p50, p99)",
        [
            q(
                f"histogram_quantile({p}, sum by (le) (rate(switchyard_projector_batch_seconds_bucket[5m])))",
                f"p{int(p * 100)}",
            )
            for p in (0.5, 0.99)
        ],
        unit="s",
    )
    b.panel(
        "Router state and restore time",
        [
            q("sum(switchyard_router_state_runs)", "runs in router memory"),
            q(
                "histogram_quantile(0.99, sum by (le) (rate(switchyard_router_restore_seconds_bucket[15m])))",
                "restore p99 (s)",
            ),
        ],
    )
    b.panel(
        "Services ready",
        [q("switchyard_service_ready", "{{instance}} {{service}}")],
        w=24,
        h=6,
        description="1 when the service has its partitions (see /readyz), 0 otherwise.",
    )
    return dashboard("switchyard-overview", "Switchyard / Overview", b, [])


def tenant() -> dict[str, Any]:
    t = '{tenant=~"$tenant"}'
    b = Board()
    b.row("Triggers and queue")
    b.panel(
        "Trigger topic lag",
        [q(f"sum by (tenant, partition) ({LAG.format(sel=t)})", "{{tenant}} [{{partition}}]")],
        description="Records of the tenant's trigger topic not yet consumed by router intake.",
    )
    b.panel(
        "Triggers by outcome",
        [q(f"sum by (tenant, outcome) (rate(switchyard_triggers_total{t}[5m]))", "{{tenant}} {{outcome}}")],
        unit="ops",
    )
    b.row("Runs")
    b.panel("In-flight runs", [q(f"sum by (tenant) (switchyard_runs_in_flight{t})", "{{tenant}}")])
    b.panel("Pending runs", [q(f"sum by (tenant) (switchyard_runs_pending{t})", "{{tenant}}")])
    b.panel(
        "Active runs by state",
        [q(f"sum by (tenant, state) (switchyard_runs_by_state{t})", "{{tenant}} {{state}}")],
    )
    b.panel(
        "Runs finished by state and workflow",
        [
            q(
                f"sum by (workflow, state) (rate(switchyard_runs_finished_total{t}[5m]))",
                "{{workflow}} {{state}}",
            )
        ],
        unit="ops",
    )
    b.row("Latency")
    b.panel(
        "Handler latency by service (p50, p99)",
        quantiles("switchyard_handler_seconds", "service", t),
        unit="s",
    )
    b.panel(
        "Action latency by action (p50, p99)", quantiles("switchyard_action_seconds", "action", t), unit="s"
    )
    b.row("Failures and throttling")
    b.panel(
        "Step retries by workflow",
        [q(f"sum by (workflow) (rate(switchyard_step_retries_total{t}[5m]))", "{{workflow}}")],
        unit="ops",
    )
    b.panel(
        "DLQ volume by reason (per 5m)",
        [
            q(
                f"sum by (service, reason) (increase(switchyard_dlq_records_total{t}[5m]))",
                "{{service}} {{reason}}",
            )
        ],
    )
    b.panel(
        "Throttled time",
        [
            q(
                f"sum by (tenant, reason) (rate(switchyard_throttled_seconds_total{t}[5m]))",
                "{{tenant}} {{reason}}",
            )
        ],
        unit="percentunit",
    )
    b.panel(
        "Action attempts by outcome",
        [
            q(
                f"sum by (action, outcome) (rate(switchyard_action_seconds_count{t}[5m]))",
                "{{action}} {{outcome}}",
            )
        ],
        unit="ops",
    )
    b.panel(
        "Projected events",
        [q(f"sum by (outcome) (rate(switchyard_projector_events_total{t}[5m]))", "{{outcome}}")],
        unit="ops",
    )
    b.panel(
        "Stale step results",
        [q(f"sum by (reason) (rate(switchyard_stale_results_total{t}[5m]))", "{{reason}}")],
        unit="ops",
    )
    variable = {
        "name": "tenant",
        "label": "Tenant",
        "type": "query",
        "datasource": DS,
        "query": "label_values(switchyard_triggers_total, tenant)",
        "definition": "label_values(switchyard_triggers_total, tenant)",
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "sort": 1,
        "current": {},
    }
    return dashboard("switchyard-tenant", "Switchyard / Tenant", b, [variable])


DASHBOARDS = {"overview.json": overview, "tenant.json": tenant}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main(argv: list[str]) -> int:
    stale = []
    for name, text in render().items():
        path = OUT / name
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python deploy/grafana/build_dashboards.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
