"""CPU profile of each Switchyard service during one saturation run, summarised as top functions.

With py-spy (``pip install py-spy``; works as root, or with ptrace permission), py-spy attaches
to each service of the chain10 Switchyard once its measurements are done, for one more
saturation run (sampling at 100 Hz, ``--nonblocking``, idle threads excluded, so the samples
are CPU time). Without it, or with ``BENCH_PROFILER=cprofile``, a fresh Switchyard runs its
services under :mod:`benchmarks.profiled` (cProfile in every thread) for their whole life,
warm-up included.

The summary per service: the functions with the most *own* samples (where the CPU is spent),
the functions with the most *inclusive* samples (what the time is spent for), and own samples
grouped by source file.
"""

from __future__ import annotations

import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.harness import CHAIN10, Sizes, saturation, warm_up
from benchmarks.switchyard_system import SwitchyardSystem

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
TOP = 12


def profiler_choice() -> str:
    """``py-spy`` when installed (unless ``BENCH_PROFILER=cprofile``), else ``cprofile``."""
    forced = os.environ.get("BENCH_PROFILER", "").strip().lower()
    if forced in ("cprofile", "py-spy"):
        return forced
    return "py-spy" if shutil.which("py-spy") else "cprofile"


def _short(path: str) -> str:
    """A source path without the interpreter's or the repository's prefix."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    match = re.search(r"/lib/python3\.\d+/(.*)$", path)
    if match:
        return f"stdlib/{match[1]}"
    return path.replace(str(Path(__file__).resolve().parent.parent) + "/", "")


def summarise_pyspy(raw: Path) -> dict[str, Any]:
    """Top functions from py-spy's raw (collapsed stacks) output."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        names = []
        for frame in stack.split(";"):
            match = FRAME.match(frame.strip())
            func, file = (match["func"], _short(match["file"])) if match else (frame.strip(), "?")
            names.append((f"{func} ({file})", file))
        if not names:
            continue
        own[names[-1][0]] += count
        by_file[names[-1][1]] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count
    return _shape(total, own, inclusive, by_file, unit="samples (100 Hz)")


def summarise_cprofile(path: Path) -> dict[str, Any]:
    """Top functions from a cProfile dump (own time = tottime, inclusive = cumtime)."""
    stats = pstats.Stats(str(path))
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_file: Counter[str] = Counter()
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (file, _line, func), (_cc, _nc, tottime, cumtime, _callers) in table.items():
        name = f"{func} ({_short(file)})"
        own[name] += int(tottime * 1000)
        inclusive[name] += int(cumtime * 1000)
        by_file[_short(file)] += int(tottime * 1000)
    return _shape(sum(own.values()), own, inclusive, by_file, unit="ms (cProfile)")


def _shape(
    total: int, own: Counter[str], inclusive: Counter[str], by_file: Counter[str], unit: str
) -> dict[str, Any]:
    def pct(n: int) -> float:
        return round(100 * n / total, 1) if total else 0.0

    return {
        "total": total,
        "unit": unit,
        "top_own": [{"function": f, "pct": pct(n)} for f, n in own.most_common(TOP)],
        "top_inclusive": [{"function": f, "pct": pct(n)} for f, n in inclusive.most_common(TOP)],
        "top_files": [{"file": f, "pct": pct(n)} for f, n in by_file.most_common(TOP)],
    }


def profile_running(system: SwitchyardSystem, sizes: Sizes, out_dir: Path) -> dict[str, Any]:
    """py-spy attached to each service of a running Switchyard during one chain saturation run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spies: dict[str, subprocess.Popen[bytes]] = {}
    summaries: dict[str, Any] = {}
    try:
        for role, child in system.children.items():
            spies[role] = subprocess.Popen(
                ["py-spy", "record", "--pid", str(child.pid), "--rate", "100", "--nonblocking",
                 "--format", "raw", "--output", str(out_dir / f"{role}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
        time.sleep(1.0)  # let py-spy attach
        errors: dict[str, bytes] = {}

        def stop_spies() -> None:  # as soon as the last run is done: the projector's catch-up is left out
            for role, spy in spies.items():
                spy.send_signal(signal.SIGINT)
                try:
                    errors[role] = spy.communicate(timeout=30)[1]
                except subprocess.TimeoutExpired:
                    spy.kill()
                    errors[role] = b"timed out"

        sat = saturation(
            system, CHAIN10, sizes.saturation_runs, sizes.timeout_s, phase="profiled", on_done=stop_spies
        )
        for role in spies:
            raw = out_dir / f"{role}.txt"
            summaries[role] = (
                summarise_pyspy(raw)
                if raw.exists()
                else {"error": errors.get(role, b"").decode(errors="replace")[-500:]}
            )
    finally:
        for spy in spies.values():
            if spy.poll() is None:
                spy.kill()
    return {
        "profiler": "py-spy",
        "runs": sat["runs"],
        "steps_per_s": sat["steps_per_s"],
        "services": summaries,
    }


def profile_fresh_cprofile(
    bootstrap: str,
    database_url: str | None,
    *,
    partitions: int,
    commit_interval_ms: int,
    sizes: Sizes,
    out_dir: Path,
) -> dict[str, Any]:
    """A fresh Switchyard whose services run under cProfile, one chain saturation run, summaries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob("*.pstats"):
        stale.unlink()
    wrapper = [sys.executable, "-m", "benchmarks.profiled", "--out-dir", str(out_dir)]
    system = SwitchyardSystem(
        bootstrap, database_url, partitions=partitions, commit_interval_ms=commit_interval_ms, wrapper=wrapper
    )
    try:
        system.start(CHAIN10)
        warm_up(system, CHAIN10, sizes.warm_runs)
        sat = saturation(system, CHAIN10, sizes.saturation_runs, sizes.timeout_s)
    finally:
        system.stop()  # the services write their statistics as they exit
    summaries: dict[str, Any] = {}
    for role in ("router", "executor", "projector"):
        dump = out_dir / f"{role}.pstats"
        summaries[role] = summarise_cprofile(dump) if dump.exists() else {"error": f"no {dump.name}"}
    return {
        "profiler": "cprofile",
        "runs": sat["runs"],
        "steps_per_s": sat["steps_per_s"],
        "services": summaries,
    }


__all__ = [
    "profile_fresh_cprofile",
    "profile_running",
    "profiler_choice",
    "summarise_cprofile",
    "summarise_pyspy",
]
