"""The measurement driver shared by every system under test (Switchyard and the baselines).

A :class:`System` starts its processes for one :class:`Workload`, accepts runs (``send``), and
reports two observations per run: when its first step *started* and when the run was *done*, on
this machine's wall clock. The driver then measures, for each workload:

* **saturation** — ``runs`` runs offered at once (a closed burst); steps/s and runs/s are the
  runs' steps divided by the wall time from the first send to the last run done;
* **50% load** — an open-loop generator sends at a fixed rate of half the saturation runs/s,
  evenly spaced, for ``duration`` seconds. Every latency is measured from the *intended* send
  time, so a generator or system that falls behind cannot hide its queueing (no coordinated
  omission).

CPU and peak RSS of every service are sampled (psutil) during the saturation window.
"""

from __future__ import annotations

import abc
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.monitor import (
    ResourceMonitor,
    RootsFn,
    kafka_broker_pids,
    machine_busy_cpu_s,
    postgres_server_pids,
    this_process,
)

Kind = Literal["first", "done"]


@dataclass(frozen=True)
class Shape:
    """A workflow shape made of no-op steps."""

    name: str  # "chain" | "fanout"
    steps: int
    width: int = 0  # fan-out width (0 for a chain)

    def describe(self) -> str:
        if self.name == "chain":
            return f"linear chain of {self.steps} no-op steps"
        return f"1 → {self.width} parallel → 1 (fan-out/fan-in, {self.steps} no-op steps)"


CHAIN = Shape("chain", 10)
FANOUT = Shape("fanout", 12, width=10)


@dataclass(frozen=True)
class Workload:
    """What to run: a shape, and how runs spread over tenants (weights: relative trigger rates)."""

    name: str
    shape: Shape
    tenant_weights: tuple[int, ...] = (1,)

    @property
    def tenants(self) -> int:
        return len(self.tenant_weights)

    def tenant_sequence(self, count: int) -> list[int]:
        """Tenant index of each of ``count`` runs: smooth weighted round robin (deterministic)."""
        weights = self.tenant_weights
        total = sum(weights)
        current = [0] * len(weights)
        order = []
        for _ in range(count):
            for i, w in enumerate(weights):
                current[i] += w
            best = max(range(len(weights)), key=lambda i: current[i])
            current[best] -= total
            order.append(best)
        return order


CHAIN10 = Workload("chain10", CHAIN)
FANOUT10 = Workload("fanout10", FANOUT)
NOISY = Workload("noisy20", CHAIN, tenant_weights=(20,) + (1,) * 19)


@dataclass
class Observation:
    kind: Kind
    key: str
    at: float  # epoch seconds, this machine's clock
    ok: bool = True


class System(abc.ABC):
    """A system under test for one workload: started, driven, observed, stopped."""

    name: str = "?"
    #: services whose CPU/RSS are reported (name → pids of the roots; children included).
    infra: tuple[str, ...] = ()

    @abc.abstractmethod
    def start(self, workload: Workload) -> None:
        """Start every process the workload needs; return when runs can be sent."""

    @abc.abstractmethod
    def send(self, key: str, tenant: int) -> None:
        """Start one run for tenant ``tenant`` (index into the workload's tenants). Thread-safe
        with respect to :meth:`poll` (called from the generator thread)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make sure every sent run has left the harness (called from the generator thread)."""

    @abc.abstractmethod
    def poll(self, timeout_s: float) -> list[Observation]:
        """Observations that arrived (waits at most ``timeout_s``)."""

    @abc.abstractmethod
    def services(self) -> dict[str, RootsFn]:
        """The system's own processes, by service name."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop everything :meth:`start` started."""

    def window_start(self) -> None:  # noqa: B027 - optional hook
        """A saturation window begins (hook for system-specific sampling)."""

    def window_stop(self, done_times: list[float]) -> dict[str, Any]:
        """A saturation window ended; ``done_times`` are the runs' done times, sorted."""
        return {}


def infra_services(names: Iterable[str]) -> dict[str, RootsFn]:
    """Shared infrastructure processes that can be measured on this machine."""
    known: dict[str, RootsFn] = {"kafka": kafka_broker_pids, "postgres": postgres_server_pids}
    return {name: known[name] for name in names if name in known}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Tracker:
    """Intended send times and observations of the runs of one phase."""

    intended: dict[str, float] = field(default_factory=dict)
    tenant: dict[str, int] = field(default_factory=dict)
    first: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def absorb(self, observations: list[Observation]) -> None:
        for obs in observations:
            if obs.key not in self.intended:
                continue  # a run of another phase
            target = self.first if obs.kind == "first" else self.done
            target.setdefault(obs.key, obs.at)
            if obs.kind == "done" and not obs.ok:
                self.failed.add(obs.key)

    def pending(self) -> int:
        return len(self.intended) - len(self.done)

    def latencies_ms(self, kind: Kind, tenants: set[int] | None = None) -> list[float]:
        seen = self.first if kind == "first" else self.done
        return [
            (seen[key] - sent) * 1000
            for key, sent in self.intended.items()
            if key in seen and (tenants is None or self.tenant[key] in tenants)
        ]


class RunTimeout(RuntimeError):
    """Runs did not finish within the phase's deadline."""


def _generate(
    system: System,
    keys: list[tuple[str, int]],
    intended: list[float] | None,
    tracker: Tracker,
    lock: threading.Lock,
    errors: list[BaseException],
) -> None:
    """Send ``keys``; at ``intended`` times when given (open loop), else as fast as possible."""
    try:
        for i, (key, tenant) in enumerate(keys):
            if intended is not None:
                delay = intended[i] - time.time()
                if delay > 0:
                    time.sleep(delay)
            with lock:
                tracker.intended[key] = intended[i] if intended is not None else time.time()
                tracker.tenant[key] = tenant
            system.send(key, tenant)
        system.flush()
    except BaseException as exc:
        errors.append(exc)


def drive(
    system: System,
    workload: Workload,
    phase: str,
    runs: int,
    rate: float | None,
    timeout_s: float,
    on_tick: Callable[[], None] | None = None,
) -> tuple[Tracker, float, float]:
    """Send ``runs`` runs (burst when ``rate`` is None, else open loop at ``rate``/s); wait until all
    are done. Returns the tracker, the first intended send time and the last done time."""
    tenants = workload.tenant_sequence(runs)
    keys = [(f"{phase}-{i}", tenants[i]) for i in range(runs)]
    tracker = Tracker()
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = time.time() + 0.05
    intended = [start + i / rate for i in range(runs)] if rate else None
    generator = threading.Thread(
        target=_generate, args=(system, keys, intended, tracker, lock, errors), daemon=True
    )
    t0 = time.time()
    generator.start()
    deadline = time.monotonic() + timeout_s
    while True:
        observations = system.poll(0.05)
        with lock:
            tracker.absorb(observations)
            complete = len(tracker.done) >= runs
        if on_tick is not None:
            on_tick()
        if complete or errors:
            break
        if time.monotonic() > deadline:
            raise RunTimeout(
                f"{system.name}/{workload.name}/{phase}: "
                f"{len(tracker.done)}/{runs} runs done in {timeout_s:.0f}s"
            )
    generator.join(30)
    if errors:
        raise errors[0]
    first_sent = min(tracker.intended.values(), default=t0)
    return tracker, first_sent, max(tracker.done.values(), default=time.time())


def warm_up(system: System, workload: Workload, runs: int, timeout_s: float = 180) -> None:
    """A few runs end to end: proves the system is up and warms caches before measuring."""
    drive(system, workload, "warm", runs, None, timeout_s)


def saturation(
    system: System,
    workload: Workload,
    runs: int,
    timeout_s: float,
    phase: str = "sat",
    on_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """A burst of ``runs`` runs: throughput, and resource use per service during the window.

    CPU is reported twice: until the last run is done (``cpu_s_per_1k_steps``) and until the
    system's post-window work is done too (``..._incl_catch_up``: Switchyard's projector
    writing the history to PostgreSQL). ``on_done`` is called as soon as the last run is done.
    ``phase`` names the runs' keys: a second burst on the same system needs another name, or
    an engine that deduplicates by idempotency key would (rightly) start none of them."""
    services = {**system.services(), **infra_services(system.infra), "harness": this_process}
    monitor = ResourceMonitor(services, roots_only=frozenset({"harness"})).start()
    busy_before, load_before = machine_busy_cpu_s(), os.getloadavg()[0]
    system.window_start()
    tracker, first_sent, last_done = drive(system, workload, phase, runs, None, timeout_s)
    if on_done is not None:
        on_done()
    busy = machine_busy_cpu_s() - busy_before
    resources = monitor.checkpoint()
    extras = system.window_stop(sorted(tracker.done.values()))
    total = monitor.stop()
    wall = max(last_done - first_sent, 1e-6)
    steps = runs * workload.shape.steps
    caught_up_at = extras.pop("projector_caught_up_at", None)
    if caught_up_at is not None:  # the same burst, counted until its history is in PostgreSQL
        extras["steps_per_s_with_history"] = round(steps / max(caught_up_at - first_sent, 1e-6), 1)
    for name, figures in resources.items():
        figures["cpu_s_per_1k_steps"] = round(figures["cpu_s"] / steps * 1000, 3)
        figures["cpu_s_per_1k_steps_incl_catch_up"] = round(total[name]["cpu_s"] / steps * 1000, 3)
        figures["peak_rss_mib"] = total[name]["peak_rss_mib"]
    return {
        "runs": runs,
        "steps": steps,
        "failed_runs": len(tracker.failed),
        "wall_s": round(wall, 3),
        "steps_per_s": round(steps / wall, 1),
        "runs_per_s": round(runs / wall, 2),
        "resources": resources,
        # The machine as a whole in the window: what the services above do not account for was
        # spent by other processes (a shared machine makes every figure here pessimistic).
        "machine_busy_cpu_s": round(busy, 2),
        "unattributed_cpu_s": round(busy - sum(f["cpu_s"] for f in resources.values()), 2),
        "loadavg_1m_before": round(load_before, 2),
        **extras,
    }


def open_loop(
    system: System, workload: Workload, rate: float, duration_s: float, timeout_s: float
) -> dict[str, Any]:
    """Runs offered at a fixed ``rate`` for ``duration_s``: latency percentiles from intended times."""
    runs = max(5, int(rate * duration_s))
    tracker, first_sent, last_done = drive(system, workload, "load", runs, rate, timeout_s)
    report: dict[str, Any] = {
        "offered_runs_per_s": round(rate, 2),
        "runs": runs,
        "failed_runs": len(tracker.failed),
        "achieved_runs_per_s": round(runs / max(last_done - first_sent, 1e-6), 2),
    }
    report.update(_latency_figures(tracker, None, ""))
    if workload.tenants > 1:
        noisy, quiet = {0}, set(range(1, workload.tenants))
        report.update(_latency_figures(tracker, noisy, "noisy_"))
        report.update(_latency_figures(tracker, quiet, "quiet_"))
    return report


def _latency_figures(tracker: Tracker, tenants: set[int] | None, prefix: str) -> dict[str, float]:
    first = tracker.latencies_ms("first", tenants)
    done = tracker.latencies_ms("done", tenants)
    return {
        f"{prefix}first_step_ms_p50": round(percentile(first, 50), 1),
        f"{prefix}first_step_ms_p99": round(percentile(first, 99), 1),
        f"{prefix}completion_ms_p50": round(percentile(done, 50), 1),
        f"{prefix}completion_ms_p99": round(percentile(done, 99), 1),
    }


@dataclass
class Sizes:
    """How much work each phase does (``--quick`` shrinks everything)."""

    warm_runs: int
    saturation_runs: int
    load_seconds: float
    timeout_s: float


FULL = Sizes(warm_runs=20, saturation_runs=1500, load_seconds=20.0, timeout_s=600)
QUICK = Sizes(warm_runs=3, saturation_runs=40, load_seconds=2.0, timeout_s=120)


def measure(
    system: System,
    workload: Workload,
    sizes: Sizes,
    log: Callable[[str], None] | None = None,
    after: Callable[[System], dict[str, Any]] | None = None,
    same_load_rate: float | None = None,
) -> dict[str, Any]:
    """Start ``system`` for ``workload``, measure saturation then 50% load, stop it.

    ``same_load_rate`` (runs/s; a baseline gets Switchyard's 50% rate) adds an open-loop phase
    at that rate, so latencies compare at the same offered load; skipped when the rate is over
    90% of the system's own saturation (it would only measure a growing queue).
    ``after`` runs on the still running system once the measurements are done (the profiled
    saturation run); its result is returned under ``"after"``."""
    started = time.monotonic()
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.monotonic() - started - sum(phases.values()), 1)
        if log is not None:
            log(f"  {phase}: {phases[phase]} s")

    try:
        system.start(workload)
        mark("start")
        warm_up(system, workload, sizes.warm_runs)
        mark("warm_up")
        sat = saturation(system, workload, sizes.saturation_runs, sizes.timeout_s)
        mark("saturation")
        rate = max(0.5, sat["runs_per_s"] * 0.5)
        load = open_loop(system, workload, rate, sizes.load_seconds, sizes.timeout_s)
        mark("half_load")
        same: dict[str, Any] | None = None
        if same_load_rate is not None:
            if same_load_rate <= 0.9 * sat["runs_per_s"]:
                same = open_loop(system, workload, same_load_rate, sizes.load_seconds, sizes.timeout_s)
                mark("same_load")
            else:
                same = {
                    "offered_runs_per_s": round(same_load_rate, 2),
                    "skipped": "over 90% of this system's saturation",
                }
        extra = after(system) if after is not None else None
        if after is not None:
            mark("after")
    finally:
        system.stop()
    mark("stop")
    return {
        "system": system.name,
        "workload": workload.name,
        "shape": workload.shape.describe(),
        "tenants": workload.tenants,
        "saturation": sat,
        "half_load": load,
        **({"same_load": same} if same_load_rate is not None else {}),
        "elapsed_s": round(time.monotonic() - started, 1),
        "phase_s": phases,
        **({"after": extra} if after is not None else {}),
    }
