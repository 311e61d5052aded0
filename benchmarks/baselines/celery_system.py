"""Baseline (b): Celery 5 with a Redis broker, the same shapes (chain, chord) of no-op tasks.

Per system instance: a throw-away ``redis-server`` on a free loopback port (broker and result
backend) and one worker, ``celery worker --pool prefork --concurrency <cores>``, with gossip,
mingle and heartbeats off (they only matter for clusters). Runs are sent from the harness with
``apply_async`` on a chain or chord signature; see :mod:`benchmarks.baselines.celery_app`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import redis
from celery import Celery, chain, chord

from benchmarks.baselines.celery_app import DONE_LIST, FIRST_LIST
from benchmarks.harness import Observation, Shape, System, Workload
from benchmarks.infra import PROCESSES, Child, Processes, pids_of, start_redis
from benchmarks.monitor import RootsFn


class CelerySystem(System):
    name = "celery-redis"
    infra = ()

    def __init__(self, *, concurrency: int | None = None, processes: Processes = PROCESSES) -> None:
        self.concurrency = concurrency or os.cpu_count() or 2
        self.processes = processes
        self.children: dict[str, Child] = {}
        self.shape: Shape | None = None
        self._app: Celery | None = None
        self._redis: redis.Redis | None = None

    def start(self, workload: Workload) -> None:
        self.shape = workload.shape
        redis_child, url = start_redis(self.processes)
        self.children["redis"] = redis_child
        env = {**os.environ, "BENCH_REDIS_URL": url}
        argv = [
            sys.executable, "-m", "celery", "-A", "benchmarks.baselines.celery_app", "worker",
            "--pool", "prefork", "--concurrency", str(self.concurrency), "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip
        self.children["celery-worker"] = self.processes.start("celery-worker", argv, env=env)
        self._app = Celery("bench-harness", broker=url, backend=url)
        self._redis = redis.Redis.from_url(url)

    def _signature(self, key: str) -> Any:
        assert self._app is not None and self.shape is not None
        app = self._app

        def task(mark: str | None = None) -> Any:
            return app.signature("bench.noop", args=(key, mark), immutable=True)

        if self.shape.name == "chain":
            middle = [task() for _ in range(self.shape.steps - 2)]
            return chain(task("first"), *middle, task("done"))
        return chain(task("first"), chord([task() for _ in range(self.shape.width)], task("done")))

    def send(self, key: str, tenant: int) -> None:
        assert self._app is not None
        # Fire and forget. Without this, every apply_async subscribes the harness to the run's
        # result channel (Redis pub/sub: a cost of the harness, not of Celery's work), and the
        # result's finaliser unsubscribes, possibly after Redis is gone. ``app.backend`` is per
        # thread, hence here, in the generator thread.
        backend = self._app.backend
        if not getattr(backend, "_bench_fire_and_forget", False):
            backend.on_task_call = lambda producer, task_id: None
            backend.remove_pending_result = lambda result: result
            backend._bench_fire_and_forget = True
        self._signature(key).apply_async()

    def poll(self, timeout_s: float) -> list[Observation]:
        assert self._redis is not None
        for name, child in self.children.items():
            if not child.alive():
                raise RuntimeError(f"{name} exited:\n{child.log_tail()}")
        observations: list[Observation] = []
        deadline = time.monotonic() + timeout_s
        while True:
            pipe = self._redis.pipeline()
            pipe.lpop(FIRST_LIST, 5000)
            pipe.lpop(DONE_LIST, 5000)
            firsts, dones = pipe.execute()
            now = time.time()
            for item in firsts or []:
                key, started = item.decode().split(" ")
                observations.append(Observation("first", key, float(started)))
            for item in dones or []:  # done when the harness sees it, as for every system
                observations.append(Observation("done", item.decode().split(" ")[0], now))
            if observations or time.monotonic() >= deadline:
                return observations
            time.sleep(0.005)

    def services(self) -> dict[str, RootsFn]:
        return {name: pids_of(child) for name, child in self.children.items()}

    def stop(self) -> None:
        for name in ("celery-worker", "redis"):
            child = self.children.pop(name, None)
            if child is not None:
                self.processes.stop(child)
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        self._app = None
