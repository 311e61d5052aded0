"""The engine processes of a scenario with their observability port on: ``/metrics`` and ``/readyz``.

:class:`ObservedCluster` is the harness's :class:`~tests.faults.harness.Cluster` with
``SWITCHYARD_METRICS_PORT`` set per process (a free port each, kept across restarts of the same
process), so a scenario can read a process's metrics and readiness the way Prometheus and a
load balancer would.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.config import Settings
from tests.faults.harness import Cluster, ServiceProcess
from tests.faults.infra import free_port


class ObservedCluster(Cluster):
    """A :class:`Cluster` whose processes serve ``/metrics``, ``/healthz`` and ``/readyz``."""

    def __init__(self, settings: Settings, database_url: str, log_dir: Path) -> None:
        super().__init__(settings, database_url, log_dir)
        self.ports: dict[str, int] = {}

    def start(self, role: str, instance_id: str | None) -> ServiceProcess:
        name = f"{role}-{instance_id}" if instance_id else role
        port = self.ports.setdefault(name, free_port())
        process = ServiceProcess(
            role, instance_id, {**self.env(), "SWITCHYARD_METRICS_PORT": str(port)}, self.log_dir
        )
        process = self.processes.setdefault(process.name, process)
        return process.start()

    def url(self, name: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{path}"


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, b""


def readiness(cluster: ObservedCluster, name: str) -> tuple[bool, dict[str, Any]]:
    """Whether ``/readyz`` of process ``name`` answers 200 with status ok, and its JSON body."""
    status, body = http_get(cluster.url(name, "/readyz"), timeout_s=15)
    try:
        report: dict[str, Any] = json.loads(body) if body else {}
    except ValueError:
        report = {"body": body[:500].decode(errors="replace")}
    return status == 200 and report.get("status") == "ok", report


@dataclass
class MetricsSnapshot:
    """One scrape of ``/metrics``: its size, series per family, and the ``tenant`` label values seen.

    ``tenant_labels`` leaves out per-topic families (those with a ``topic`` label, e.g. consumer
    lag): their series follow the topics that exist, which an operator creates, not the records a
    tenant sends; ``topic_tenant_labels`` has them.
    """

    size: int
    series: Counter[str]
    tenant_labels: dict[str, set[str]]
    topic_tenant_labels: dict[str, set[str]]

    @classmethod
    def parse(cls, text: bytes) -> MetricsSnapshot:
        series: Counter[str] = Counter()
        tenants: dict[str, set[str]] = {}
        per_topic: dict[str, set[str]] = {}
        for family in text_string_to_metric_families(text.decode("utf-8", "replace")):
            for sample in family.samples:
                series[family.name] += 1
                tenant = sample.labels.get("tenant")
                if tenant is not None:
                    into = per_topic if "topic" in sample.labels else tenants
                    into.setdefault(family.name, set()).add(tenant)
        return cls(len(text), series, tenants, per_topic)


def scrape(cluster: ObservedCluster, name: str) -> MetricsSnapshot:
    status, body = http_get(cluster.url(name, "/metrics"), timeout_s=15)
    assert status == 200, f"/metrics of {name} answered {status}"
    return MetricsSnapshot.parse(body)


def counter_value(cluster: ObservedCluster, name: str, family: str, **labels: str) -> float:
    """The sum of a family's samples whose labels include ``labels`` (0 when none)."""
    status, body = http_get(cluster.url(name, "/metrics"), timeout_s=15)
    if status != 200:
        return 0.0
    total = 0.0
    for fam in text_string_to_metric_families(body.decode("utf-8", "replace")):
        if fam.name != family:
            continue
        for sample in fam.samples:
            if sample.name.endswith("_total") and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@dataclass
class ReadinessSampler:
    """Samples ``/readyz`` of some processes once a second, in a thread, until stopped."""

    cluster: ObservedCluster
    names: list[str]
    samples: dict[str, list[tuple[float, bool]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> ReadinessSampler:
        self.thread = threading.Thread(target=self._run, name="readyz", daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            for name in self.names:
                ok, _ = readiness(self.cluster, name)
                self.samples.setdefault(name, []).append((time.time(), ok))
            self.stop.wait(1.0)

    def close(self) -> dict[str, dict[str, int]]:
        self.stop.set()
        self.thread.join(15)
        return {
            name: {"samples": len(s), "not_ready": sum(1 for _, ok in s if not ok)}
            for name, s in self.samples.items()
        }
