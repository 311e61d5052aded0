"""The procrastinate application of baseline (c): a PostgreSQL job queue running the same chain.

procrastinate has no chain primitive; the idiomatic chain is a task that defers its successor:
``step(key, k, n)`` defers ``step(key, k + 1, n)`` until ``k + 1 == n``. The harness reads the
``started`` event of step 0 and the ``succeeded`` event of step ``n - 1`` from procrastinate's
own ``procrastinate_events`` table.

    BENCH_PROCRASTINATE_DSN=postgresql://... \\
        procrastinate --app benchmarks.baselines.procrastinate_app.app worker
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

TASK = "bench.step"

app = App(connector=PsycopgConnector(conninfo=os.environ.get("BENCH_PROCRASTINATE_DSN", "")))


@app.task(name=TASK, pass_context=False)
async def step(key: str, k: int, n: int) -> None:
    """A no-op step that defers the next step of its chain."""
    if k + 1 < n:
        await step.defer_async(key=key, k=k + 1, n=n)
