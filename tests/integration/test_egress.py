"""Safe egress on real sockets: ``http.request`` on the real engine refuses a server on 127.0.0.1
(``egress_denied``) unless the tenant's allow-list names it; the system resolver's ``localhost``
is refused; a huge body (plain or gzip) fails ``response_too_large`` without the process growing;
TLS is verified for the URL's name while the vetted address is dialled; ``/metrics`` and the
health endpoints listen on loopback by default."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry

from services.actions.egress import EgressConfig, IPAddress
from services.actions.http import HttpRequest
from services.config import Settings
from services.contracts.records import StepResult
from services.executor import ActionRegistry, execute_command
from services.observability.health import Health
from services.observability.server import ObservabilityServer
from services.runtime import ObservabilityOptions, run_services
from services.workflow.signing import private_key_from_b64, public_key_b64
from tests.fixtures.engine import Engine, register_tenant
from tests.unit.executor.helpers import command, message_of

pytestmark = pytest.mark.integration

HUGE = 300 * 1024 * 1024  # what the executor was fed: 300 MB
CHUNK = b"x" * 65536


def gzip_bomb(mebibytes: int) -> bytes:
    """A gzip body inflating to ``mebibytes`` MiB of zeros, about 1 KiB per MiB on the wire; each
    MiB is a fully flushed block, so one block compressed once is repeated (no trailer: readers
    stop long before the end)."""
    zeros = b"\0" * (1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)
    return first + block * (mebibytes - 1)


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-body is the point of these tests


class Target:
    """A server on 127.0.0.1 playing an internal service: a secret, huge bodies, and a hit log."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.sent = 0
        target = self
        bomb = gzip_bomb(HUGE >> 20)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                target.hits.append(self.path)
                if self.path == "/huge":  # 300 MB in 64 KiB writes
                    self._send(HUGE, {"Content-Type": "text/plain"}, [CHUNK] * (HUGE // len(CHUNK)))
                elif self.path == "/bomb":  # 300 KB on the wire, 300 MiB inflated
                    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
                    self._send(len(bomb), headers, [bomb[i : i + 65536] for i in range(0, len(bomb), 65536)])
                else:
                    self._send(6, {"Content-Type": "text/plain"}, [b"s3cr3t"])

            def _send(self, length: int, headers: dict[str, str], pieces: list[bytes]) -> None:
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                try:
                    for piece in pieces:
                        self.wfile.write(piece)
                        target.sent += len(piece)
                except OSError:
                    self.close_connection = True  # the client hung up: what a bounded reader does

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


FETCH = """
name: fetch
version: 1
trigger: {event: fetch}
steps:
  - {id: get, action: http.request, inputs: {url: "${{ trigger.data.url }}"}}
"""


def test_the_engine_refuses_loopback_unless_the_tenant_lists_it(
    engine_factory: Callable[..., Engine], target: Target
) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    eng = engine_factory()  # acme: no allow-list; the dev switch is off
    public = public_key_b64(private_key_from_b64(eng.private_key))
    register_tenant(eng.settings, "beta", public, egress_allow=["127.0.0.1"])
    assert eng.start("router", run_router, instance_id="r1").wait(60)
    assert eng.start("executor", run_executor, instance_id="e1").wait(60)
    eng.publish(FETCH)
    eng.publish(FETCH, tenant="beta")
    base = f"127.0.0.1:{target.port}"
    refused = {
        f"http://{base}/admin/secret": "loopback",
        f"http://localhost:{target.port}/admin/secret": "loopback",
        f"http://0x7f000001:{target.port}/admin/secret": "loopback",
        f"http://2130706433:{target.port}/admin/secret": "loopback",
        f"http://[::ffff:127.0.0.1]:{target.port}/admin/secret": "loopback",
        "http://169.254.169.254/latest/meta-data/": "link-local",
        "http://10.0.0.5:5432/": "private",
    }
    runs = {eng.run_id("fetch", eng.trigger("fetch", {"url": url})): kind for url, kind in refused.items()}
    allowed = eng.run_id(
        "fetch", eng.trigger("fetch", {"url": f"http://{base}/admin/secret"}, tenant="beta"), "beta"
    )
    denied_beta = eng.run_id(
        "fetch", eng.trigger("fetch", {"url": "http://10.0.0.5/"}, tenant="beta"), "beta"
    )
    events = eng.wait_terminal([*runs, allowed, denied_beta], timeout_s=90)

    for run_id, kind in runs.items():
        last = events[run_id][-1]
        assert last["type"] == "run_failed", events[run_id]
        failed = [e for e in events[run_id] if e["type"] == "step_failed"]
        assert len(failed) == 1  # not retried
        assert failed[0]["detail"]["error_kind"] == "egress_denied"
        assert f"{kind} address" in failed[0]["detail"]["error_message"]
    assert events[allowed][-1]["type"] == "run_succeeded", events[allowed]
    output = next(e for e in events[allowed] if e["type"] == "step_succeeded")["detail"]["output"]
    assert output["text"] == "s3cr3t"
    assert events[denied_beta][-1]["type"] == "run_failed"  # beta's list names 127.0.0.1 only
    assert target.hits == ["/admin/secret"]  # beta's call; acme's never reached the server


def run_action(http: HttpRequest, url: str) -> StepResult:
    registry = ActionRegistry.load(builtins=False, entry_points=False)
    registry.register(http)

    async def main() -> StepResult:
        try:
            return await execute_command(registry, command("http.request", {"url": url, "timeout": 60}))
        finally:
            await http.aclose()

    return asyncio.run(main())


def test_the_system_resolver_s_localhost_is_refused(target: Target) -> None:
    result = run_action(HttpRequest(), f"http://localhost:{target.port}/admin/secret")
    assert (result["error_kind"], result["retryable"]) == ("egress_denied", False)
    assert "localhost (" in message_of(result) and "loopback address" in message_of(result)
    assert target.hits == []


@pytest.mark.parametrize("path", ["/huge", "/bomb"])
def test_a_huge_body_fails_response_too_large_without_growing_the_process(target: Target, path: str) -> None:
    process = psutil.Process()
    http = HttpRequest(egress=EgressConfig(allow_private=True))
    run_action(http, f"http://127.0.0.1:{target.port}/admin/secret")  # warm up: imports, TLS context, loop
    target.sent = 0
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:  # the peak, not the end: a freed 64 MiB buffer leaves no trace in RSS
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = run_action(http, f"http://127.0.0.1:{target.port}{path}")
    finally:
        done.set()
        sampler.join()
    grown = peak - before
    print(f"{path}: peak RSS +{grown / 2**20:.1f} MiB; the server wrote {target.sent / 2**20:.2f} MiB")
    assert (result["error_kind"], result["retryable"]) == ("response_too_large", False)
    assert grown < 16 * 2**20
    assert target.sent < 32 * 2**20  # the reader hung up long before the end


def non_loopback_address() -> str | None:
    """An address of this machine other than loopback (UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = str(sock.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_metrics_and_health_listen_on_loopback_by_default() -> None:
    assert Settings().metrics_host == "127.0.0.1"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    settings = Settings(metrics_port=port)
    stop, serving = threading.Event(), threading.Event()
    servers: list[ObservabilityServer] = []

    def service(settings: Settings, stop: threading.Event, *, ready: threading.Event) -> None:
        ready.set()
        stop.wait()

    def on_serving(server: ObservabilityServer) -> None:
        servers.append(server)
        serving.set()

    thread = threading.Thread(
        target=run_services,
        args=(settings, {"idle": service}, stop),
        kwargs={
            "observability": ObservabilityOptions(
                registry=CollectorRegistry(), health=Health(), dependencies={}, on_serving=on_serving
            )
        },
    )
    thread.start()
    try:
        assert serving.wait(10)
        assert servers[0].host == "127.0.0.1"
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        other = non_loopback_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    finally:
        stop.set()
        thread.join(30)
    exposed = ObservabilityServer(CollectorRegistry(), Health(), 0, "0.0.0.0").start()
    try:
        assert exposed.host == "0.0.0.0"  # an explicit choice (containers) still works
    finally:
        exposed.stop()


def self_signed(name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) for ``name``: its own CA, valid for an hour."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture
def tls_target(tmp_path: Path) -> Iterator[tuple[int, bytes, list[str]]]:
    """An HTTPS server on 127.0.0.1 whose certificate names ``egress.test``; yields its port, the
    certificate, and the Host headers it received."""
    cert, key = self_signed("egress.test")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    hosts: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hosts.append(self.headers.get("Host", ""))
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = QuietServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1]), cert, hosts
    server.shutdown()
    server.server_close()


def test_tls_is_verified_for_the_name_while_the_vetted_address_is_dialled(
    tls_target: tuple[int, bytes, list[str]],
) -> None:
    port, cert, hosts = tls_target
    looked_up: list[str] = []

    async def resolver(host: str, _port: int) -> list[IPAddress]:
        looked_up.append(host)
        return [ipaddress.ip_address("127.0.0.1")]  # every name points at the test server

    context = ssl.create_default_context(cadata=cert.decode())
    egress = EgressConfig(tenant_allow=lambda tenant: ["egress.test", "other.test"])

    def fetch(url: str) -> StepResult:
        return run_action(HttpRequest(egress=egress, resolver=resolver, ssl_context=context), url)

    good = fetch(f"https://egress.test:{port}/")
    assert good["status"] == "succeeded", good
    assert hosts == [f"egress.test:{port}"]
    # Same address, a name the certificate does not carry: verification fails, nothing is sent.
    wrong = fetch(f"https://other.test:{port}/")
    assert (wrong["error_kind"], wrong["retryable"]) == ("http_transport_error", True)
    assert "Hostname mismatch, certificate is not valid for 'other.test'" in message_of(wrong)
    assert hosts == [f"egress.test:{port}"]
    assert looked_up == ["egress.test", "other.test"]
