"""``python -m benchmarks.console_api [--runs 1000000] [--requests 200]``: the console API's latency
for filtered runs lists over a large history.

Makes a scratch database (dropped at the end unless ``--keep``), migrates it, bulk-loads synthetic
runs with COPY (50 tenants, skewed; 20 workflows x 3 versions; ~85% succeeded, 8% failed with 5
error kinds, the rest in flight; 30 days), ANALYZEs, then serves the real console app with uvicorn
on 127.0.0.1 and times ``GET /v1/runs`` over HTTP for several filters (a global operator and a
tenant operator; the first page and pages deep in a keyset walk). Prints p50/p99 per query and
the plan of the slowest query.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
from sqlalchemy.orm import Session

from benchmarks.infra import postgres_admin_url, with_dbname
from services.config import Settings
from services.console.accounts import add_operator
from services.projector.db import make_engine, upgrade_database

TENANTS = [f"tenant-{i:02d}" for i in range(50)]
WEIGHTS = [1.0 / (i + 1) for i in range(50)]  # tenant-00 has ~22% of the runs, tenant-49 ~0.4%
WORKFLOWS = [f"wf-{i:02d}" for i in range(20)]
STATES = ["succeeded"] * 85 + ["failed"] * 8 + ["running"] * 3 + ["pending"] * 2 + ["retrying", "cancelled"]
ERRORS = ["upstream_down", "timeout", "invalid_output", "http_500", "rate_limited"]
NOW = datetime.now(UTC)


def load(url: str, runs: int, seed: int = 7) -> dict[str, str]:
    """COPY ``runs`` synthetic runs; returns a sample correlation id and idempotency key."""
    rng = random.Random(seed)
    sample: dict[str, str] = {}
    columns = (
        "run_id, tenant, workflow, version, state, correlation_id, idempotency_key, event_type, "
        "created_at, started_at, finished_at, updated_at, last_seq, error_kind, error_message"
    )
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY runs ({columns}) FROM STDIN") as copy:
            for i in range(runs):
                tenant = rng.choices(TENANTS, WEIGHTS)[0]
                state = rng.choice(STATES)
                created = NOW - timedelta(seconds=rng.random() * 30 * 86400)
                finished = (
                    created + timedelta(seconds=2) if state in ("succeeded", "failed", "cancelled") else None
                )
                error = rng.choice(ERRORS) if state == "failed" else None
                correlation, key = str(uuid.UUID(int=rng.getrandbits(128))), f"key-{i}"
                if i == runs // 2:
                    sample = {"correlation_id": correlation, "idempotency_key": key, "tenant": tenant}
                copy.write_row(
                    (
                        str(uuid.UUID(int=rng.getrandbits(128))),
                        tenant,
                        rng.choice(WORKFLOWS),
                        rng.randint(1, 3),
                        state,
                        correlation,
                        key,
                        "evt",
                        created,
                        created,
                        finished,
                        finished or created,
                        5,
                        error,
                        f"{error}: failed" if error else None,
                    )
                )
        conn.execute("ANALYZE runs")
    return sample


def serve(settings: Settings) -> tuple[str, Any, threading.Thread]:
    import socket

    import uvicorn

    from services.console.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def queries(sample: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, operator, params) of the measured requests."""
    big, small = "tenant-00", "tenant-30"
    day_ago = (NOW - timedelta(days=1)).isoformat()
    week_ago = (NOW - timedelta(days=7)).isoformat()
    return [
        ("newest 50 (no filter)", "root", {}),
        ("state=failed", "root", {"state": "failed"}),
        ("error_kind=timeout", "root", {"error_kind": "timeout"}),
        ("tenant (big)", "root", {"tenant": big}),
        ("tenant (big) + state=failed", "root", {"tenant": big, "state": "failed"}),
        ("tenant (small) + state=cancelled", "root", {"tenant": small, "state": "cancelled"}),
        ("tenant (big) + workflow + version", "root", {"tenant": big, "workflow": "wf-03", "version": 2}),
        ("tenant (big) + error_kind", "root", {"tenant": big, "error_kind": "http_500"}),
        (
            "tenant (big) + time range 1 day",
            "root",
            {"tenant": big, "created_from": week_ago, "created_to": day_ago},
        ),
        ("correlation id", "root", {"correlation_id": sample["correlation_id"]}),
        ("idempotency key", "root", {"idempotency_key": sample["idempotency_key"]}),
        ("tenant operator: own runs, state=failed", "tenant-op", {"state": "failed"}),
        ("tenant operator: workflow filter", "tenant-op", {"workflow": "wf-07"}),
    ]


def timed(client: httpx.Client, params: dict[str, Any], token: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {token}"}
    client.get("/v1/runs", params=params, headers=headers).raise_for_status()  # warm
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get("/v1/runs", params=params, headers=headers)
        out.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return out


def deep_pages(client: httpx.Client, params: dict[str, Any], token: str, pages: int) -> list[float]:
    """Latency of each page while walking ``pages`` pages of a keyset listing."""
    headers = {"Authorization": f"Bearer {token}"}
    out, cursor = [], None
    for _ in range(pages):
        t0 = time.perf_counter()
        r = client.get(
            "/v1/runs", params={**params, **({"cursor": cursor} if cursor else {})}, headers=headers
        )
        out.append((time.perf_counter() - t0) * 1000)
        cursor = r.raise_for_status().json()["next_cursor"]
        if cursor is None:
            break
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument("--reuse", metavar="DATABASE", help="measure a database kept by --keep (no load)")
    args = parser.parse_args()
    admin = postgres_admin_url()
    name = args.reuse or f"sy_bench_console_{uuid.uuid4().hex[:8]}"
    if not args.reuse:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(admin, name)
    try:
        upgrade_database(url)
        if args.reuse:
            with psycopg.connect(url) as conn:
                args.runs = conn.execute("select count(*) from runs").fetchone()[0]  # type: ignore[index]
                row = conn.execute(
                    "select correlation_id, idempotency_key, tenant from runs where idempotency_key = %s",
                    (f"key-{args.runs // 2}",),
                ).fetchone()
            assert row is not None
            sample = {"correlation_id": row[0], "idempotency_key": row[1], "tenant": row[2]}
        else:
            t0 = time.monotonic()
            sample = load(url, args.runs)
            print(f"loaded {args.runs:,} runs with COPY in {time.monotonic() - t0:.1f} s (database {name})")
        engine = make_engine(url)
        with Session(engine) as session:
            tokens = {}
            for operator, tenants in (("root", []), ("tenant-op", ["tenant-00"])):
                from services.console.accounts import add_token

                if args.reuse:
                    tokens[operator] = add_token(session, "operator", operator).token
                else:
                    tokens[operator] = add_operator(session, operator, tenants, "operator", not tenants).token
            session.commit()
        engine.dispose()
        settings = Settings(database_url=url, kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="bench")
        base, server, thread = serve(settings)
        rows = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for label, who, params in queries(sample):
                lat = timed(client, {**params, "limit": 50}, tokens[who], args.requests)
                rows.append((label, statistics.median(lat), pct(lat, 0.99), max(lat)))
            for label, params in (
                ("keyset walk, 200 pages (tenant big)", {"tenant": "tenant-00"}),
                ("keyset walk, 200 pages (state=failed)", {"state": "failed"}),
            ):
                lat = deep_pages(client, {**params, "limit": 50}, tokens["root"], 200)
                rows.append((label, statistics.median(lat), pct(lat, 0.99), max(lat)))
        server.should_exit = True
        thread.join(10)
        print(
            f"\nGET /v1/runs?limit=50 over {args.runs:,} runs, {args.requests} requests each (HTTP, uvicorn, "
            "one client)\n"
        )
        print("| query | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: |")
        for label, p50, p99, worst in rows:
            print(f"| {label} | {p50:.1f} | {p99:.1f} | {worst:.1f} |")
    finally:
        if not args.keep and not args.reuse:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
