"""Helpers (no tests) of the observability integration tests: run services with metrics on, scrape them."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.config import Settings
from services.runtime import ObservabilityOptions, ServiceFn, run_services
from tests.fixtures.engine import Engine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())


def wait_for(what: str, condition: Callable[[], Any], timeout_s: float = 30.0, every_s: float = 0.2) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


@dataclass
class Samples:
    """One scrape of ``/metrics``: every sample as (name, labels, value)."""

    rows: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Samples:
        rows = [
            (s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
        ]
        return cls(rows)

    def matching(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (lbl, value)
            for n, lbl, value in self.rows
            if n == name and all(lbl.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the matching samples (0 when none)."""
        return sum(value for _, value in self.matching(name, **labels))

    def names(self) -> set[str]:
        return {n for n, _, _ in self.rows}


@dataclass
class Served:
    """Services running under :func:`run_services` with the HTTP endpoints on ``port``."""

    engine: Engine
    settings: Settings
    port: int
    gate: threading.Event
    thread: threading.Thread
    errors: list[BaseException]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.base + path)

    def json(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = self.get(path)
        return status, json.loads(body)

    def scrape(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return Samples.parse(body.decode())


def gated_service(gate: threading.Event) -> ServiceFn:
    """A service that becomes ready only once ``gate`` is set (holds /readyz at 503 until then)."""

    def gate_service(settings: Settings, stop: threading.Event, *, ready: threading.Event) -> None:
        while not stop.is_set() and not gate.wait(0.1):
            pass
        ready.set()
        stop.wait()

    return gate_service


def serve(engine: Engine, services: Mapping[str, ServiceFn], **settings_update: Any) -> Served:
    """Run ``services`` plus a gate service with metrics on a free port, stopped by the engine fixture."""
    port = free_port()
    settings = engine.settings.model_copy(
        update={"metrics_port": port, "instance_id": f"obs-{port}", **settings_update}
    )
    gate = threading.Event()
    errors: list[BaseException] = []
    listening = threading.Event()

    def target() -> None:
        try:
            run_services(
                settings,
                {**services, "gate": gated_service(gate)},
                engine.stop,
                observability=ObservabilityOptions(
                    host="127.0.0.1", on_serving=lambda server: listening.set(), lag_interval_s=1.0
                ),
            )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="run_services", daemon=True)
    thread.start()
    engine.threads.append(thread)
    assert listening.wait(30), "the metrics server did not start"
    return Served(engine, settings, port, gate, thread, errors)
