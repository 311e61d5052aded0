"""Health checks, the HTTP server and run_services' wiring, without Kafka (dependencies injected)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from services.config import Settings
from services.observability.health import CachedCheck, CheckResult, Health
from services.observability.server import ObservabilityServer
from services.runtime import ObservabilityOptions, accepts_ready, default_dependencies, run_services


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cached_check_runs_once_per_ttl_and_turns_exceptions_into_failures() -> None:
    calls: list[int] = []
    clock = Clock()

    def check() -> CheckResult:
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionError("broker down")
        return CheckResult(True, "ok")

    cached = CachedCheck(check, ttl_s=5, clock=clock)
    assert cached() == CheckResult(True, "ok")
    clock.now = 4.9
    assert cached().ok and len(calls) == 1
    clock.now = 5.0
    assert cached() == CheckResult(False, "ConnectionError: broker down")
    clock.now = 10.0
    assert cached().ok and len(calls) == 3


def test_health_liveness_and_readiness() -> None:
    health = Health()
    a, b = health.service("a"), health.service("b")
    a.running = b.running = True
    dep = {"ok": True}
    health.dependencies["kafka"] = lambda: CheckResult(dep["ok"], "x")
    assert health.liveness()[0] is True
    assert health.readiness()[0] is False
    a.ready.set()
    b.ready.set()
    ok, report = health.readiness()
    assert ok and report["dependencies"] == {"kafka": {"ok": True, "detail": "x"}}
    dep["ok"] = False
    assert health.readiness()[0] is False
    dep["ok"] = True
    b.died, b.error = True, "RuntimeError: boom"
    live, report = health.liveness()
    assert not live
    assert report["services"]["b"] == {"state": "died", "ready": True, "error": "RuntimeError: boom"}
    assert health.readiness()[0] is False


@pytest.fixture
def server() -> Iterator[tuple[ObservabilityServer, Health, CollectorRegistry]]:
    registry = CollectorRegistry()
    Counter("demo_things", "things", ["kind"], registry=registry).labels("x").inc(3)
    health = Health()
    srv = ObservabilityServer(registry, health, port=0, host="127.0.0.1").start()
    yield srv, health, registry
    srv.stop()


def test_server_serves_the_injected_registry_and_health(
    server: tuple[ObservabilityServer, Health, CollectorRegistry],
) -> None:
    srv, health, _ = server
    base = f"http://127.0.0.1:{srv.port}"
    status, body = get(base + "/metrics")
    assert status == 200 and 'demo_things_total{kind="x"} 3.0' in body.decode()
    status_svc = health.service("svc")
    status_svc.running = True
    assert get(base + "/healthz")[0] == 200
    status, body = get(base + "/readyz")
    assert status == 503 and json.loads(body)["services"]["svc"] == {"state": "running", "ready": False}
    status_svc.ready.set()
    assert get(base + "/readyz")[0] == 200
    status_svc.died = True
    assert get(base + "/healthz")[0] == 503
    assert get(base + "/other")[0] == 404


def test_accepts_ready() -> None:
    def with_ready(settings: Settings, stop: threading.Event, *, ready: threading.Event) -> None: ...
    def with_kwargs(settings: Settings, stop: threading.Event, **kwargs: object) -> None: ...
    def plain(settings: Settings, stop: threading.Event) -> None: ...

    assert accepts_ready(with_ready) and accepts_ready(with_kwargs) and not accepts_ready(plain)


def test_default_dependencies_include_the_database_only_with_a_projector() -> None:
    settings = Settings(kafka_bootstrap_servers="127.0.0.1:1", database_url="postgresql://x/y")
    assert set(default_dependencies(settings, {"router": print})) == {"kafka"}
    assert set(default_dependencies(settings, {"projector": print})) == {"kafka", "database"}
    no_db = settings.model_copy(update={"database_url": None})
    assert set(default_dependencies(no_db, {"projector": print})) == {"kafka"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_run_services_serves_health_and_reports_a_dead_service() -> None:
    """Metrics on: a ready service, a legacy one (no ``ready``), one that fails when told to."""
    stop, fail_now, listening = threading.Event(), threading.Event(), threading.Event()
    settings = Settings(metrics_port=free_port())

    def steady(settings: Settings, stop: threading.Event, *, ready: threading.Event) -> None:
        ready.set()
        stop.wait()

    def legacy(settings: Settings, stop: threading.Event) -> None:
        stop.wait()

    def failing(settings: Settings, stop: threading.Event, *, ready: threading.Event) -> None:
        ready.set()
        fail_now.wait(30)
        raise RuntimeError("boom")

    errors: list[BaseException] = []
    health = Health()

    def target() -> None:
        try:
            run_services(
                settings,
                {"steady": steady, "legacy": legacy, "failing": failing},
                stop,
                observability=ObservabilityOptions(
                    registry=CollectorRegistry(),
                    health=health,
                    dependencies={"fake": lambda: CheckResult(True, "fine")},
                    host="127.0.0.1",
                    on_serving=lambda server: listening.set(),
                ),
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        assert listening.wait(10)
        base = f"http://127.0.0.1:{settings.metrics_port}"
        deadline = time.monotonic() + 10
        while get(base + "/readyz")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, body = get(base + "/readyz")
        assert status == 200, body
        report = json.loads(body)
        assert report["dependencies"] == {"fake": {"ok": True, "detail": "fine"}}
        assert set(report["services"]) == {"steady", "legacy", "failing"}
        assert get(base + "/healthz")[0] == 200
    finally:
        fail_now.set()
        thread.join(30)
    assert not thread.is_alive() and stop.is_set()
    assert len(errors) == 1 and str(errors[0]) == "boom"
    assert health.services["failing"].died and health.services["failing"].error == "RuntimeError: boom"
    assert health.liveness()[0] is False
    assert get_or_none(f"http://127.0.0.1:{settings.metrics_port}/healthz") is None  # server stopped


def get_or_none(url: str) -> tuple[int, bytes] | None:
    try:
        return get(url)
    except OSError:
        return None
