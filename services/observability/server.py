"""The observability HTTP server: ``/metrics``, ``/healthz`` and ``/readyz`` on one port.

A stdlib ``ThreadingHTTPServer`` in a daemon thread; the Prometheus registry and the
:class:`~services.observability.health.Health` are injected, so tests serve their own.

* ``GET /metrics`` — the registry in the Prometheus text format (OpenMetrics when asked for).
* ``GET /healthz`` — 200 while no service thread died, else 503; JSON body with each service.
* ``GET /readyz`` — 200 when every service is ready, the broker (and database) answer and no
  partition is stalled, else 503; the JSON body says which service, dependency or partitions
  (with for how long) are not.

It listens on loopback unless told otherwise (``SWITCHYARD_METRICS_HOST``): the metrics carry
every tenant's series, and nothing a tenant's workflow can reach should serve them
(``http.request`` refuses loopback too).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from services.observability.health import Health, HealthReport

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif path == "/healthz":
            self._json(*self.server.health.liveness())
        elif path == "/readyz":
            self._json(*self.server.health.readiness())
        elif path == "/":
            self._send(200, b"switchyard: /metrics /healthz /readyz\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def _json(self, ok: bool, report: HealthReport) -> None:
        body = json.dumps({"status": "ok" if ok else "unavailable", **report}, default=str).encode()
        self._send(200 if ok else 503, body + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry, health: Health) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.registry = registry
        self.health = health
        super().__init__(address, _Handler)


class ObservabilityServer:
    """Serves the three endpoints until :meth:`stop`. ``port=0`` binds a free port (see :attr:`port`);
    ``host`` is the address to listen on (loopback by default)."""

    def __init__(
        self, registry: CollectorRegistry, health: Health, port: int, host: str = "127.0.0.1"
    ) -> None:
        self._server = _Server((host, port), registry, health)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics-http", daemon=True
        )

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ObservabilityServer:
        self._thread.start()
        log.info("serving /metrics /healthz /readyz", extra={"host": self.host, "port": self.port})
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
