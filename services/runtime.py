"""Process runtime for the long-running commands: logging, signals, and running services in threads.

The first SIGTERM/SIGINT asks every loop to finish its current transaction and close cleanly;
a second one exits at once.

:func:`run_services` runs each service function in its own thread. With
``settings.metrics_port > 0`` it also serves ``/metrics``, ``/healthz`` and ``/readyz`` on that
port (on ``settings.metrics_host``, loopback by default) and runs the consumer-lag collector
for the consumer groups of the services it runs:

* healthz: no service thread died (a thread that ends before ``stop`` is set counts as dead);
* readyz: every service set its ``ready`` event, the broker answers a metadata request, —
  when a projector runs and a ``DATABASE_URL`` is configured — PostgreSQL answers too (both
  cached a few seconds), and no partition of the services' transactional loops is stalled
  (records to process, no commit progress for ``SWITCHYARD_STALL_AFTER_S``; the process-wide
  :data:`~services.observability.progress.BOARD`).
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from services.config import Settings
from services.observability import logs, metrics
from services.observability.health import (
    CachedCheck,
    Check,
    Health,
    ServiceStatus,
    broker_check,
    database_check,
)
from services.observability.lag import LagCollector, groups_for
from services.observability.progress import BOARD
from services.observability.server import ObservabilityServer

log = logging.getLogger(__name__)

DEPENDENCY_CACHE_S = 3.0
LAG_INTERVAL_S = 5.0


def install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        log.info("stopping (signal %s); send it again to exit at once", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def setup_logging(settings: Settings) -> None:
    logs.configure(settings.log_level, settings.log_format)


ServiceFn = Callable[..., None]
"""``fn(settings, stop, *, ready=threading.Event())``; functions without a ``ready`` parameter
count as ready as soon as their thread starts."""


def accepts_ready(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` takes a ``ready`` keyword (explicitly or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "ready" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def default_dependencies(settings: Settings, services: Mapping[str, ServiceFn]) -> dict[str, Check]:
    """Readiness dependencies: the broker always; PostgreSQL when a projector runs with a URL."""
    deps: dict[str, Check] = {"kafka": CachedCheck(broker_check(settings), DEPENDENCY_CACHE_S)}
    if "projector" in services and settings.database_url:
        deps["database"] = CachedCheck(database_check(settings.database_url), DEPENDENCY_CACHE_S)
    return deps


@dataclass(frozen=True)
class ObservabilityOptions:
    """How :func:`run_services` serves its endpoints (``metrics_port`` > 0 only); the defaults are
    production's, tests inject the rest.

    ``registry``: default the shared :data:`~services.observability.metrics.REGISTRY`; ``health``:
    default a new :class:`Health`; ``dependencies``: default :func:`default_dependencies`;
    ``host``: default ``settings.metrics_host``; ``on_serving`` is called with the HTTP server once
    it listens; ``lag_interval_s`` paces the lag collector.
    """

    registry: CollectorRegistry | None = None
    health: Health | None = None
    dependencies: Mapping[str, Check] | None = None
    host: str | None = None
    on_serving: Callable[[ObservabilityServer], None] | None = None
    lag_interval_s: float = LAG_INTERVAL_S


def run_services(
    settings: Settings,
    services: Mapping[str, ServiceFn],
    stop: threading.Event,
    *,
    observability: ObservabilityOptions = ObservabilityOptions(),  # frozen: one shared default is safe
) -> None:
    """Run each service in a thread; if one fails, stop them all and re-raise its error."""
    health = observability.health if observability.health is not None else Health()
    if health.progress is None:
        health.progress = BOARD
    errors: list[BaseException] = []
    statuses = {name: health.service(name) for name in services}
    server, collector = None, None
    if settings.metrics_port > 0:
        server, collector = _serve(settings, services, health, observability)

    threads = [
        threading.Thread(target=_guarded, args=(settings, stop, n, f, statuses[n], errors), name=n)
        for n, f in services.items()
    ]
    for name in services:
        metrics.SERVICE_READY.labels(name).set(0)
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
                _publish_ready(statuses)
    finally:
        if collector is not None:
            collector.stop()
            collector.clear()
        if server is not None:
            server.stop()
    if errors:
        raise errors[0]


def _guarded(
    settings: Settings,
    stop: threading.Event,
    name: str,
    fn: ServiceFn,
    status: ServiceStatus,
    errors: list[BaseException],
) -> None:
    """Run one service (its thread's target): a failure or an early return stops every service."""
    status.running = True
    metrics.SERVICE_UP.labels(name).set(1)
    try:
        if accepts_ready(fn):
            fn(settings, stop, ready=status.ready)
        else:
            status.ready.set()
            fn(settings, stop)
        if not stop.is_set():
            status.died, status.error = True, "returned before stop"
            log.error("service %s returned before stop was requested", name)
            stop.set()
    except BaseException as exc:
        status.died, status.error = True, f"{type(exc).__name__}: {exc}"
        errors.append(exc)
        log.exception("service %s failed", name)
        stop.set()
    finally:
        status.running = False
        metrics.SERVICE_UP.labels(name).set(0)
        metrics.SERVICE_READY.labels(name).set(0)


def _serve(
    settings: Settings, services: Mapping[str, ServiceFn], health: Health, options: ObservabilityOptions
) -> tuple[ObservabilityServer, LagCollector | None]:
    """Start the HTTP endpoints and (when the services have consumer groups) the lag collector."""
    dependencies = options.dependencies
    health.dependencies.update(
        dependencies if dependencies is not None else default_dependencies(settings, services)
    )
    server = ObservabilityServer(
        options.registry if options.registry is not None else metrics.REGISTRY,
        health,
        settings.metrics_port,
        options.host if options.host is not None else settings.metrics_host,
    ).start()
    groups = groups_for(settings.topic_prefix, services)
    collector = LagCollector(settings, groups, options.lag_interval_s).start() if groups else None
    if options.on_serving is not None:
        options.on_serving(server)
    return server, collector


def _publish_ready(statuses: Mapping[str, ServiceStatus]) -> None:
    for name, status in statuses.items():
        metrics.SERVICE_READY.labels(name).set(1 if status.ready.is_set() and status.running else 0)
