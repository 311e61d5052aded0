"""Cancelled ``http.request`` attempts give their connections back to the pool.

httpcore loses track of a request cancelled mid-flight: its connection stays "active" in the
pool for good, and after enough cancellations (failed or cancelled runs, step deadlines) every
call waits the pool timeout and fails ``http_timeout`` against a healthy target, which opens the
circuit breaker. The action shields the exchange from the attempt's cancellation. A loopback
server stands in for the target (the pool's behaviour is httpcore's, not a fake's).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.actions.egress import EgressConfig
from services.actions.http import HttpRequest, HttpRequestInput
from services.executor.plugins import ActionContext


class _Slow(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(0.2)
        body = b'{"ok": true}'
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client went away

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


@pytest.fixture
def url() -> Iterator[str]:
    server = _Server(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/effect"
    server.shutdown()
    server.server_close()


def _context(n: int) -> ActionContext:
    return ActionContext(
        tenant="acme",
        run_id=f"run-{n}",
        step_id="s1",
        attempt=1,
        idempotency_key=f"key-{n}",
        deadline=time.time() + 60,
        correlation_id=f"corr-{n}",
        log=logging.LoggerAdapter(logging.getLogger("test"), {}),  # type: ignore[arg-type]
    )


def test_cancelled_attempts_do_not_use_up_the_connection_pool(url: str) -> None:
    http = HttpRequest(egress=EgressConfig(allow_private=True))
    inputs = HttpRequestInput.model_validate({"method": "POST", "url": url, "json": {"a": 1}, "timeout": 10})
    rng = random.Random(7)

    async def main() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        for burst in range(6):  # unshielded, six bursts left ~70 of the 100 slots taken
            tasks = [asyncio.create_task(http.run(_context(burst * 1000 + i), inputs)) for i in range(120)]
            for task in tasks:
                if rng.random() < 0.7:
                    loop.call_later(rng.uniform(0.0, 0.4), task.cancel)
            await asyncio.gather(*tasks, return_exceptions=True)
        # the abandoned exchanges finish in the background
        await asyncio.gather(*list(http._exchanges), return_exceptions=True)
        client = http._client(http._egress.policy_for("acme"))
        pool = client._transport._pool  # type: ignore[attr-defined]
        held = [repr(c) for c in pool.connections if not (c.is_idle() or c.is_closed())]
        answers = await asyncio.gather(*(http.run(_context(10_000 + i), inputs) for i in range(120)))
        return held, sum(answer["status"] == 200 for answer in answers)

    held, answered = asyncio.run(main())
    # Nothing runs any more, so no connection may still count as in use (unshielded: ~70 did).
    assert held == []
    assert answered == 120
