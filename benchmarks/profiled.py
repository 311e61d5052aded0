"""Run a Switchyard service under cProfile (every thread), for hosts where py-spy cannot attach.

    python -m benchmarks.profiled --out-dir DIR router --instance-id r1

runs ``services.cli.main`` with the remaining arguments, profiling the main thread and every
thread started afterwards (the router's intake and core loops are threads), and at exit writes
the merged statistics to ``DIR/<command>.pstats``. The harness uses it only when py-spy is
missing or forced off (``BENCH_PROFILER=cprofile``); cProfile's own overhead inflates the total
but keeps the proportions between functions roughly right.
"""

from __future__ import annotations

import atexit
import contextlib
import cProfile
import pstats
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

_PROFILES: list[cProfile.Profile] = []
_LOCK = threading.Lock()


def _start_in_thread(frame: FrameType, event: str, arg: Any) -> None:
    """Installed with :func:`threading.setprofile`: replaces itself with a fresh profiler."""
    profile = cProfile.Profile()
    with _LOCK:
        _PROFILES.append(profile)
    profile.enable()


def _dump(path: Path) -> None:
    for profile in _PROFILES:
        profile.disable()
    stats: pstats.Stats | None = None
    for profile in _PROFILES:
        try:
            if stats is None:
                stats = pstats.Stats(profile)
            else:
                stats.add(profile)
        except TypeError:  # a profile that never saw a call
            continue
    if stats is not None:
        stats.dump_stats(str(path))


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 3 or args[0] != "--out-dir":
        raise SystemExit("usage: python -m benchmarks.profiled --out-dir DIR COMMAND [ARGS...]")
    out_dir = Path(args[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    command = args[2:]
    atexit.register(_dump, out_dir / f"{command[0]}.pstats")
    threading.setprofile(_start_in_thread)
    main_profile = cProfile.Profile()
    _PROFILES.append(main_profile)
    sys.argv = ["switchyard", *command]
    from services.cli import main as cli_main

    main_profile.enable()
    with contextlib.suppress(SystemExit):
        cli_main()


if __name__ == "__main__":
    main()
