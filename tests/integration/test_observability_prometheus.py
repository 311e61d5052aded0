"""A real Prometheus server scrapes the services, loads the alert rules and runs every dashboard query.

Needs the ``prometheus`` binary (Debian package ``prometheus``). Without it the test is skipped,
unless ``SWITCHYARD_REQUIRE_PROMETHEUS`` is set (CI), in which case it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.executor.service import run_executor
from services.router.service import run_router
from tests.fixtures.engine import Engine
from tests.integration.test_observability import CHAIN
from tests.integration.test_observability_support import Served, free_port, http_get, serve, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "the prometheus binary is not installed (apt-get install -y prometheus)"
        if os.environ.get("SWITCHYARD_REQUIRE_PROMETHEUS"):
            pytest.fail(f"{message}; SWITCHYARD_REQUIRE_PROMETHEUS is set", pytrace=False)
        pytest.skip(message)
    return binary


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.base}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", (path, params, payload)
        return payload["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])


@pytest.fixture
def prometheus(tmp_path: Path, engine_factory: Callable[..., Engine]) -> Iterator[tuple[Prometheus, Served]]:
    binary = prometheus_binary()
    served = serve(engine_factory(), {"router": run_router, "executor": run_executor})
    served.gate.set()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "switchyard", "static_configs": [{"targets": [f"127.0.0.1:{served.port}"]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                return http_get(base + "/-/ready", timeout_s=1)[0] == 200
            except OSError:
                return False

        wait_for("prometheus ready", ready, timeout_s=30)
        yield Prometheus(base), served
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def dashboard_queries() -> list[str]:
    exprs = []
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            exprs += [t["expr"].replace("$tenant", "acme") for t in panel.get("targets", [])]
    return exprs


def test_prometheus_scrapes_services_and_loads_rules(prometheus: tuple[Prometheus, Served]) -> None:
    prom, served = prometheus
    eng = served.engine
    wait_for("/readyz 200", lambda: served.get("/readyz")[0] == 200, timeout_s=60)
    eng.publish(CHAIN)
    run_id = eng.run_id("obs-chain", eng.trigger("obs.go", {"msg": "prom"}))
    eng.wait_terminal([run_id], timeout_s=60)

    wait_for("target up", lambda: any(r["value"][1] == "1" for r in prom.query('up{job="switchyard"}')))
    finished = 'sum(switchyard_runs_finished_total{tenant="acme", workflow="obs-chain", state="succeeded"})'
    wait_for("the finished run scraped", lambda: prom.query(finished), timeout_s=20)
    lag = prom.query(f'switchyard_consumer_lag{{group="{served.settings.topic_prefix}.router.intake"}}')
    assert {r["metric"].get("tenant", "") for r in lag} == {"acme", ""}  # "" (control) is no label

    def rules_evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else None

    rules = wait_for("every alert rule evaluated without error", rules_evaluated, timeout_s=20)
    assert {r["name"] for r in rules} >= {
        "SwitchyardDLQGrowing",
        "SwitchyardConsumerLagGrowing",
        "SwitchyardRunsStuck",
    }

    for expr in dashboard_queries():  # every dashboard query parses and evaluates
        prom.api("query", query=expr)
