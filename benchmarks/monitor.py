"""Resource use of the processes under test: peak RSS and CPU seconds, per service, with psutil.

A *service* is a set of root pids; its processes are the roots and all their descendants (Celery's
prefork children, PostgreSQL backends), re-read at every sample, so processes born during the
window count from zero and processes that exit keep the CPU they were last seen with.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

RootsFn = Callable[[], list[int]]


def _tree(roots: list[int], recursive: bool = True) -> list[psutil.Process]:
    procs: list[psutil.Process] = []
    for pid in roots:
        try:
            root = psutil.Process(pid)
            procs.append(root)
            if recursive:
                procs.extend(root.children(recursive=True))
        except psutil.Error:
            continue
    return procs


@dataclass
class _Service:
    roots: RootsFn
    recursive: bool = True
    first_cpu: dict[int, float] = field(default_factory=dict)
    last_cpu: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0


class ResourceMonitor:
    """Samples every ``interval_s`` between :meth:`start` and :meth:`stop` (a daemon thread)."""

    def __init__(
        self, services: dict[str, RootsFn], interval_s: float = 0.2, roots_only: frozenset[str] = frozenset()
    ) -> None:
        """``roots_only``: services measured without their descendants (the harness itself)."""
        self._services = {name: _Service(roots, name not in roots_only) for name, roots in services.items()}
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False

    def _sample(self) -> None:
        for svc in self._services.values():
            rss = 0
            for proc in _tree(svc.roots(), svc.recursive):
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        cpu = times.user + times.system
                        rss += proc.memory_info().rss
                except psutil.Error:
                    continue
                if proc.pid not in svc.first_cpu:
                    svc.first_cpu[proc.pid] = cpu if not self._started else 0.0
                svc.last_cpu[proc.pid] = cpu
            svc.peak_rss = max(svc.peak_rss, rss)

    def start(self) -> ResourceMonitor:
        self._sample()
        self._started = True
        self._thread = threading.Thread(target=self._run, name="resource-monitor", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def checkpoint(self) -> dict[str, dict[str, float]]:
        """Figures so far (sampling goes on): per service ``cpu_s`` and ``peak_rss_mib``."""
        self._sample()
        return self._report()

    def stop(self) -> dict[str, dict[str, float]]:
        """Stop sampling; per service: ``cpu_s`` used in the window and ``peak_rss_mib``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._sample()
        return self._report()

    def _report(self) -> dict[str, dict[str, float]]:
        report: dict[str, dict[str, float]] = {}
        for name, svc in self._services.items():
            cpu = sum(svc.last_cpu[pid] - svc.first_cpu.get(pid, 0.0) for pid in svc.last_cpu)
            report[name] = {"cpu_s": round(cpu, 3), "peak_rss_mib": round(svc.peak_rss / 2**20, 1)}
        return report


def machine_busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores, all processes) since boot."""
    times = psutil.cpu_times()
    idle = float(times.idle) + float(getattr(times, "iowait", 0.0))
    return float(sum(times)) - idle


def kafka_broker_pids() -> list[int]:
    """The local Kafka broker's JVM(s) (``kafka.Kafka`` main class), if it runs on this machine."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any(arg == "kafka.Kafka" for arg in cmdline):
            found.append(proc.pid)
    return found


def postgres_server_pids() -> list[int]:
    """PostgreSQL postmasters on this machine (their backends are found as children)."""
    found = []
    for proc in psutil.process_iter(["name", "ppid"]):
        if proc.info.get("name") != "postgres":
            continue
        try:
            parent = psutil.Process(proc.info["ppid"]).name()
        except psutil.Error:
            parent = ""
        if parent != "postgres":
            found.append(proc.pid)
    return found


def this_process() -> list[int]:
    """The benchmark harness itself (load generator and observer)."""
    return [os.getpid()]
