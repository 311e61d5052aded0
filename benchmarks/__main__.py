"""``python -m benchmarks run [--quick]``: Switchyard and its baselines, side by side, in one command.

``python -m benchmarks projector [--before REV]``: the projector alone (see
:mod:`benchmarks.projector`), before and after a change, in one run.

``python -m benchmarks idle [--before REV]``: trigger → succeeded in PostgreSQL after 5 s, 30 s
and 120 s of idle, against the warm latency (see :mod:`benchmarks.idle_latency`).

Starts what it needs (Kafka and PostgreSQL through the local launcher unless
``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL`` are set; a throw-away Redis from ``redis-server``,
installed with apt-get when missing and running as root), runs every workload on Switchyard and
on each baseline, profiles one Switchyard saturation run, prints a markdown report and writes
``benchmarks/results/<timestamp>-<mode>.json`` and ``.md`` (and ``latest.json`` / ``latest.md``).

``--quick`` runs everything, tiny (the CI smoke check); its figures are not benchmarks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import infra
from benchmarks.harness import CHAIN10, FANOUT10, FULL, NOISY, QUICK, Sizes, System, Workload, measure
from benchmarks.report import machine, markdown, ratios, targets

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = ("switchyard", "kafka-floor", "celery-redis", "procrastinate-pg")
WORKLOADS: dict[str, Workload] = {w.name: w for w in (CHAIN10, FANOUT10, NOISY)}
#: which workloads each baseline runs (the issue: Celery the chain and chord shapes,
#: procrastinate the chain; the floor both shapes).
BASELINE_WORKLOADS = {
    "kafka-floor": ("chain10", "fanout10"),
    "celery-redis": ("chain10", "fanout10"),
    "procrastinate-pg": ("chain10",),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the workloads and baselines, print and save the report")
    run.add_argument("--quick", action="store_true", help="everything, tiny: a smoke check (CI)")
    run.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list out of {', '.join(SYSTEMS)}")
    run.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma list out of {', '.join(WORKLOADS)}"
    )
    run.add_argument("--runs", type=int, help="runs per saturation burst (default: 1500, quick: 60)")
    run.add_argument("--load-seconds", type=float, help="seconds of open-loop load (default: 20, quick: 3)")
    run.add_argument("--partitions", type=int, default=4, help="partitions of the internal topics")
    run.add_argument("--instances", type=int, default=1,
                     help="routers and executors the engine runs (scale-out; ≤ --partitions)")  # fmt: skip
    run.add_argument("--commit-interval-ms", type=int, default=10,
                     help="SWITCHYARD_COMMIT_INTERVAL_MS of the engine and the floor")  # fmt: skip
    run.add_argument("--no-profile", action="store_true", help="skip the profiled saturation run")
    run.add_argument("--output", type=Path, default=RESULTS_DIR, help="where the JSON and markdown go")
    proj = sub.add_parser(
        "projector", help="the projector alone: catch-up and paced-load lag, before vs after"
    )
    proj.add_argument("--before", help="git revision to measure first, from a temporary worktree")
    proj.add_argument("--runs", type=int, default=2000, help="chain10 runs in the catch-up burst")
    proj.add_argument("--rate", type=float, default=75.0, help="runs/s of the paced load (chain10)")
    proj.add_argument("--load-seconds", type=float, default=20.0, help="seconds of paced load")
    proj.add_argument("--partitions", type=int, default=4, help="partitions of the history topic")
    proj.add_argument("--output", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    idle = sub.add_parser("idle", help="trigger → succeeded latency after idle, against warm")
    idle.add_argument("--before", help="git revision to measure first, from a temporary worktree")
    idle.add_argument("--idle", default="5,30,120", help="comma list of idle seconds before a trigger")
    idle.add_argument("--warm-runs", type=int, default=12, help="runs back to back for the warm latency")
    idle.add_argument("--output", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    if args.command == "run" and not 1 <= args.instances <= args.partitions:
        parser.error(f"--instances must be between 1 and --partitions ({args.partitions})")
    return args


def _sizes(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL
    return Sizes(
        warm_runs=base.warm_runs,
        saturation_runs=args.runs or base.saturation_runs,
        load_seconds=args.load_seconds or base.load_seconds,
        timeout_s=base.timeout_s,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything ``run`` does; returns the report document (also written to ``args.output``)."""
    infra.install_cleanup()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    workloads = [WORKLOADS[w.strip()] for w in args.workloads.split(",") if w.strip()]
    sizes = _sizes(args)
    started = dt.datetime.now(dt.UTC)
    log = _progress
    log(f"benchmarks ({'quick' if args.quick else 'full'}): {', '.join(systems)}")
    bootstrap = infra.kafka_bootstrap(log)
    admin_url = infra.postgres_admin_url(log)
    projector_db = infra.fresh_database(admin_url, infra.unique("sy_bench_"))
    skipped: list[str] = []
    factories: dict[str, Callable[[], System]] = {}
    if "switchyard" in systems:
        from benchmarks.switchyard_system import SwitchyardSystem

        factories["switchyard"] = lambda: SwitchyardSystem(
            bootstrap,
            projector_db,
            partitions=args.partitions,
            commit_interval_ms=args.commit_interval_ms,
            catch_up_timeout_s=sizes.timeout_s,
            instances=args.instances,
        )
    if "kafka-floor" in systems:
        from benchmarks.floor import KafkaFloorSystem

        factories["kafka-floor"] = lambda: KafkaFloorSystem(
            bootstrap, partitions=args.partitions, commit_interval_ms=args.commit_interval_ms
        )
    if "celery-redis" in systems:
        try:
            infra.ensure_redis_binary()
            from benchmarks.baselines.celery_system import CelerySystem

            factories["celery-redis"] = CelerySystem
        except (infra.RedisUnavailable, ImportError) as exc:
            skipped.append(f"celery-redis: {exc} (pip install -e '.[bench]', apt-get install redis-server)")
    if "procrastinate-pg" in systems:
        try:
            from benchmarks.baselines.procrastinate_system import ProcrastinateSystem

            factories["procrastinate-pg"] = lambda: ProcrastinateSystem(admin_url)
        except ImportError as exc:
            skipped.append(f"procrastinate-pg: {exc} (pip install -e '.[bench]')")

    from benchmarks.profiling import profile_fresh_cprofile, profile_running, profiler_choice

    profile: dict[str, Any] | None = None
    profiler = None if args.no_profile or "switchyard" not in systems else profiler_choice()
    profile_dir = args.output / "profiles"

    def profile_hook(system: System) -> dict[str, Any]:
        from benchmarks.switchyard_system import SwitchyardSystem

        assert isinstance(system, SwitchyardSystem)
        log("switchyard / chain10: one more saturation run under py-spy")
        try:
            return profile_running(system, sizes, profile_dir)
        except Exception as exc:
            traceback.print_exc()
            return {"error": f"{type(exc).__name__}: {exc}"}

    results: list[dict[str, Any]] = []
    for name in systems:
        if name not in factories:
            continue
        for workload in workloads:
            if name != "switchyard" and workload.name not in BASELINE_WORKLOADS[name]:
                continue
            log(f"{name} / {workload.name}: saturation ({sizes.saturation_runs} runs), then 50% load")
            hook = (
                profile_hook
                if profiler == "py-spy" and (name, workload.name) == ("switchyard", "chain10")
                else None
            )
            reference = next(
                (r for r in results if r["system"] == "switchyard" and r["workload"] == workload.name), None
            )
            same_rate = None
            if name != "switchyard" and reference is not None and "error" not in reference:
                same_rate = float(reference["half_load"]["offered_runs_per_s"])
            try:
                result = measure(
                    factories[name](), workload, sizes, log, after=hook, same_load_rate=same_rate
                )
                if hook is not None:
                    profile = result.pop("after")
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                traceback.print_exc()
                result = {"system": name, "workload": workload.name, "error": f"{type(exc).__name__}: {exc}"}
            else:
                sat, load = result["saturation"], result["half_load"]
                log(
                    f"  {sat['steps_per_s']:,.0f} steps/s, {sat['runs_per_s']:,.1f} runs/s; at 50%: "
                    f"first step p99 {load['first_step_ms_p99']} ms, "
                    f"completion p99 {load['completion_ms_p99']} ms"
                )
            results.append(result)

    if profiler == "cprofile" or (profiler == "py-spy" and profile is None):
        log("switchyard / chain10: profiled saturation run (cProfile, fresh services)")
        try:
            profile = profile_fresh_cprofile(
                bootstrap,
                projector_db,
                partitions=args.partitions,
                commit_interval_ms=args.commit_interval_ms,
                sizes=sizes,
                out_dir=profile_dir,
            )
        except Exception as exc:
            traceback.print_exc()
            profile = {"error": f"{type(exc).__name__}: {exc}"}

    ratio_rows = ratios(results)
    doc: dict[str, Any] = {
        "meta": {
            "mode": "quick" if args.quick else "full",
            "started_at": started.strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1),
            "command": "python -m benchmarks " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "machine": machine(),
            "engine_settings": {
                "internal_partitions": args.partitions,
                "instances": args.instances,
                "commit_interval_ms": args.commit_interval_ms,
                "max_batch": 500,
            },
            "sizes": vars(sizes),
        },
        "results": results,
        "ratios": ratio_rows,
        "targets": targets(results, ratio_rows),
        "profile": profile,
        "skipped": skipped,
    }
    write(doc, args.output)
    return doc


def write(doc: dict[str, Any], out_dir: Path) -> Path:
    """Write ``<stamp>-<mode>.json`` / ``.md`` and ``latest.json`` / ``latest.md``; print the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    text = markdown(doc)
    body = json.dumps(doc, indent=2, default=str)
    path = out_dir / f"{stamp}-{doc['meta']['mode']}.json"
    for target, content in (
        (path, body),
        (path.with_suffix(".md"), text),
        (out_dir / "latest.json", body),
        (out_dir / "latest.md", text),
    ):
        target.write_text(content)
    print(text)
    _progress(f"wrote {path} and {path.with_suffix('.md')}")
    return path


def _projector(args: argparse.Namespace) -> None:
    from benchmarks.projector import markdown as projector_markdown
    from benchmarks.projector import run_projector_benchmark

    doc = run_projector_benchmark(
        args.before, args.runs, args.rate, args.load_seconds, args.partitions, _progress
    )
    doc["command"] = "python -m benchmarks " + shlex.join(sys.argv[1:])
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = args.output / f"{stamp}-projector.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(projector_markdown(doc))
    _progress(f"wrote {path}")


def _idle(args: argparse.Namespace) -> None:
    from benchmarks.idle_latency import markdown as idle_markdown
    from benchmarks.idle_latency import run_idle_benchmark

    idles = [float(x) for x in args.idle.split(",") if x.strip()]
    doc = run_idle_benchmark(args.before, idles, args.warm_runs, _progress)
    doc["command"] = "python -m benchmarks " + shlex.join(sys.argv[1:])
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    path = args.output / f"{stamp}-idle.json"
    path.write_text(json.dumps(doc, indent=2, default=str))
    print(idle_markdown(doc))
    _progress(f"wrote {path}")


def _progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.command == "projector":
            _projector(args)
        elif args.command == "idle":
            _idle(args)
        else:
            run(args)
    except KeyboardInterrupt:
        _progress("interrupted: stopping what was started")
        raise SystemExit(130) from None
    finally:
        infra.run_cleanups()


if __name__ == "__main__":
    main()
