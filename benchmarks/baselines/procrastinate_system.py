"""Baseline (c): procrastinate, a PostgreSQL job queue (workers poll the jobs table), same chain.

Per system instance: a fresh database with procrastinate's schema, and one ``procrastinate worker``
process per core (``--concurrency`` jobs each, LISTEN/NOTIFY on: procrastinate's defaults, so
the workers wake up on a new job and otherwise poll). Runs are deferred from the harness through
a synchronous connector; see :mod:`benchmarks.baselines.procrastinate_app`.
"""

from __future__ import annotations

import os
import sys
import time

import psycopg
from procrastinate import App, SyncPsycopgConnector

from benchmarks.baselines.procrastinate_app import TASK
from benchmarks.harness import Observation, System, Workload
from benchmarks.infra import PROCESSES, Child, Processes, fresh_database, unique
from benchmarks.monitor import RootsFn

EVENTS = """
select e.id, e.type::text, j.args->>'key', extract(epoch from e.at)::float8
from procrastinate_events e join procrastinate_jobs j on j.id = e.job_id
where e.id > %s and j.task_name = %s and (
    (e.type = 'started' and (j.args->>'k')::int = 0)
    or (e.type in ('succeeded', 'failed') and (j.args->>'k')::int = (j.args->>'n')::int - 1))
order by e.id
"""


class ProcrastinateSystem(System):
    name = "procrastinate-pg"
    infra = ("postgres",)

    def __init__(
        self,
        admin_url: str,
        *,
        workers: int | None = None,
        concurrency: int = 10,
        processes: Processes = PROCESSES,
    ) -> None:
        self.admin_url = admin_url
        self.workers = workers or os.cpu_count() or 2
        self.concurrency = concurrency
        self.processes = processes
        self.children: dict[str, Child] = {}
        self.steps = 10
        self._app: App | None = None
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._after = 0

    def start(self, workload: Workload) -> None:
        if workload.shape.name != "chain":
            raise ValueError("the procrastinate baseline runs the chain only")
        self.steps = workload.shape.steps
        url = fresh_database(self.admin_url, unique("sy_bench_pq_"))
        self._app = App(connector=SyncPsycopgConnector(conninfo=url))
        self._app.open()
        self._app.schema_manager.apply_schema()
        env = {**os.environ, "BENCH_PROCRASTINATE_DSN": url}
        for i in range(self.workers):
            argv = [
                sys.executable, "-m", "procrastinate", "--app", "benchmarks.baselines.procrastinate_app.app",
                "worker", "--concurrency", str(self.concurrency), "--name", f"bench-{i}",
            ]  # fmt: skip
            self.children[f"worker-{i}"] = self.processes.start(f"procrastinate-worker-{i}", argv, env=env)
        self._conn = psycopg.connect(url, autocommit=True)
        self._after = 0

    def send(self, key: str, tenant: int) -> None:
        assert self._app is not None
        self._app.configure_task(TASK).defer(key=key, k=0, n=self.steps)

    def poll(self, timeout_s: float) -> list[Observation]:
        assert self._conn is not None
        for name, child in self.children.items():
            if not child.alive():
                raise RuntimeError(f"procrastinate {name} exited:\n{child.log_tail()}")
        deadline = time.monotonic() + timeout_s
        while True:
            # Event ids are allocated before their transactions commit, so a smaller id may appear
            # after a larger one: re-read a margin (the tracker ignores repeats).
            rows = self._conn.execute(EVENTS, (max(0, self._after - 2000), TASK)).fetchall()
            now = time.time()
            observations = []
            for event_id, kind, key, at in rows:
                self._after = max(self._after, int(event_id))  # type: ignore[call-overload]
                if kind == "started":
                    observations.append(Observation("first", str(key), float(at)))  # type: ignore[arg-type]
                else:
                    observations.append(Observation("done", str(key), now, kind == "succeeded"))
            if observations or time.monotonic() >= deadline:
                return observations
            time.sleep(0.01)

    def services(self) -> dict[str, RootsFn]:
        return {"workers": lambda: [c.pid for c in self.children.values()]}

    def stop(self) -> None:
        for child in list(self.children.values()):
            self.processes.stop(child)
        self.children.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._app is not None:
            self._app.close()
            self._app = None
