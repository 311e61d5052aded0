"""The Celery 5 application of baseline (b): one no-op task, Redis as broker and result backend.

A chain is ``noop.si(key, "first") | noop.si(key) | … | noop.si(key, "done")``; a chord is
``noop.si(key, "first") | chord([noop.si(key)] * 10, noop.si(key, "done"))`` (a chord needs a
result backend: Redis). The ``first`` task records its start time and the ``done`` task its end
time on two Redis lists the harness reads; every other task does nothing.

    BENCH_REDIS_URL=redis://127.0.0.1:PORT celery -A benchmarks.baselines.celery_app worker
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
FIRST_LIST = "bench:first"
DONE_LIST = "bench:done"

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    result_expires=600,
)
_marks: redis.Redis | None = None


def _redis() -> redis.Redis:
    global _marks
    if _marks is None:
        _marks = redis.Redis.from_url(REDIS_URL)
    return _marks


@app.task(name="bench.noop")  # type: ignore[untyped-decorator]
def noop(key: str, mark: str | None = None) -> None:
    """A no-op step; the first and last step of a run leave a timestamp for the harness."""
    if mark == "first":
        _redis().rpush(FIRST_LIST, f"{key} {time.time()}")
    elif mark == "done":
        _redis().rpush(DONE_LIST, f"{key} {time.time()}")
