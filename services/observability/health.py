"""Liveness and readiness checks behind ``/healthz`` and ``/readyz``.

A check is a zero-argument callable returning a :class:`CheckResult`. Checks that talk to the
network (broker, database) are wrapped in :class:`CachedCheck` so a scraper probing every
second costs at most one round trip per ``ttl_s``; the round trips themselves use short timeouts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NotRequired, TypedDict

from services.config import Settings
from services.observability.progress import ProgressBoard, describe_stalls


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check; ``detail`` says why it failed (or what it saw)."""

    ok: bool
    detail: str = ""


Check = Callable[[], CheckResult]


class CachedCheck:
    """Runs ``check`` at most once per ``ttl_s``; concurrent callers share the one in progress.

    An exception raised by the check counts as a failure with the exception as its detail.
    """

    def __init__(self, check: Check, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._result: CheckResult | None = None
        self._at = 0.0

    def __call__(self) -> CheckResult:
        with self._lock:
            now = self._clock()
            if self._result is None or now - self._at >= self._ttl_s:
                try:
                    self._result = self._check()
                except Exception as exc:
                    self._result = CheckResult(False, f"{type(exc).__name__}: {exc}")
                self._at = now
            return self._result


def broker_check(settings: Settings, timeout_s: float = 2.0) -> Check:
    """The broker answers a metadata request within ``timeout_s``."""
    from confluent_kafka.admin import AdminClient

    admin: AdminClient | None = None

    def check() -> CheckResult:
        nonlocal admin
        if admin is None:
            admin = AdminClient(settings.kafka_config())
        metadata = admin.list_topics(timeout=timeout_s)
        return CheckResult(True, f"{len(metadata.brokers)} broker(s)")

    return check


def database_check(url: str, timeout_s: int = 2) -> Check:
    """PostgreSQL accepts a connection and answers ``select 1`` within ``timeout_s``."""

    def check() -> CheckResult:
        import psycopg

        with psycopg.connect(url, connect_timeout=timeout_s) as conn:
            conn.execute("select 1")
        return CheckResult(True, "ok")

    return check


class ServiceReport(TypedDict):
    state: Literal["died", "running", "stopped"]
    ready: bool
    error: NotRequired[str]


class DependencyReport(TypedDict):
    ok: bool
    detail: str


class ProgressReport(TypedDict):
    ok: bool
    stalled: dict[str, str]


class HealthReport(TypedDict):
    """The body of ``/healthz`` (``services``) and ``/readyz`` (all three), before ``status``."""

    services: dict[str, ServiceReport]
    dependencies: NotRequired[dict[str, DependencyReport]]
    progress: NotRequired[ProgressReport]


@dataclass
class ServiceStatus:
    """One service thread as the health endpoints see it."""

    ready: threading.Event = field(default_factory=threading.Event)
    running: bool = False
    died: bool = False
    error: str | None = None

    def describe(self) -> ServiceReport:
        state: Literal["died", "running", "stopped"] = (
            "died" if self.died else "running" if self.running else "stopped"
        )
        out: ServiceReport = {"state": state, "ready": self.ready.is_set()}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Health:
    """What ``/healthz`` and ``/readyz`` report.

    * live: every service thread is alive (or was asked to stop) — nothing died.
    * ready: live, every service signalled ``ready``, every dependency check passes, and no
      partition of these services' loops is stalled (``progress``: records to process, no commit
      progress for ``SWITCHYARD_STALL_AFTER_S``; see :mod:`services.observability.progress`).
    """

    services: dict[str, ServiceStatus] = field(default_factory=dict)
    dependencies: dict[str, Check] = field(default_factory=dict)
    progress: ProgressBoard | None = None

    def service(self, name: str) -> ServiceStatus:
        return self.services.setdefault(name, ServiceStatus())

    def liveness(self) -> tuple[bool, HealthReport]:
        report = {name: s.describe() for name, s in self.services.items()}
        return all(not s.died for s in self.services.values()), {"services": report}

    def readiness(self) -> tuple[bool, HealthReport]:
        live, report = self.liveness()
        services_ready = live and all(s.ready.is_set() for s in self.services.values())
        deps: dict[str, DependencyReport] = {}
        deps_ok = True
        for name, check in self.dependencies.items():
            result = check()
            deps[name] = {"ok": result.ok, "detail": result.detail}
            deps_ok = deps_ok and result.ok
        report["dependencies"] = deps
        progress_ok = True
        if self.progress is not None:
            stalls = self.progress.stalls(list(self.services) or None)
            progress_ok = not stalls
            report["progress"] = {"ok": progress_ok, "stalled": describe_stalls(stalls)}
        return services_ready and deps_ok and progress_ok, report
