"""``http.request`` under the egress policy, through httpx and httpcore down to the socket layer,
which is faked: a resolver from a table and a network backend that records where it was asked to
connect and answers with a canned HTTP response. No I/O."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import pytest

from services.actions import http as http_module
from services.actions.egress import EgressConfig, IPAddress
from services.actions.http import MAX_RESPONSE_BYTES, HttpRequest
from services.config import Settings
from services.contracts.records import StepResult
from services.executor import ActionRegistry, execute_command
from services.executor.breaker import BreakerPolicy, CircuitBreakers
from services.executor.guardrails import Guardrails
from services.executor.service import configure_egress
from services.tenancy.config import TenantConfig
from tests.unit.executor.helpers import command, message_of, output_of

NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    "internal.acme": ["10.0.0.5"],
    "rebind.example": ["93.184.216.34", "127.0.0.1"],
    "api.example": ["93.184.216.34"],
    "v6.example": ["2606:4700:4700::1111"],
}
OK = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n", b'{"ok":true}']


class Resolver:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.calls.append(host)
        name = host.rstrip(".").lower()  # as DNS compares names
        if name not in NAMES:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return [ipaddress.ip_address(a) for a in NAMES[name]]


class Stream(httpcore.AsyncMockStream):
    def __init__(self, backend: Backend, buffer: list[bytes]) -> None:
        super().__init__(buffer)
        self.backend = backend

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.backend.written += buffer

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        self.backend.tls.append((server_hostname, ssl_context.verify_mode, ssl_context.check_hostname))
        return self


@dataclass
class Backend(httpcore.AsyncNetworkBackend):
    """Records every connection; answers each with ``response``."""

    response: list[bytes] = field(default_factory=lambda: list(OK))
    connects: list[tuple[str, int]] = field(default_factory=list)
    tls: list[tuple[str | None, ssl.VerifyMode, bool]] = field(default_factory=list)
    written: bytes = b""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return Stream(self, list(self.response))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def action(
    backend: Backend, egress: EgressConfig | None = None, resolver: Resolver | None = None
) -> HttpRequest:
    return HttpRequest(egress=egress, resolver=resolver or Resolver(), network_backend=backend)


def call(http: HttpRequest, url: str, tenant: str = "acme", **kwargs: Any) -> StepResult:
    registry = ActionRegistry.load(builtins=False, entry_points=False)
    registry.register(http)
    return asyncio.run(
        execute_command(registry, command("http.request", {"url": url}, tenant=tenant), **kwargs)
    )


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://127.0.0.1:5432/", "loopback"),
        ("http://localhost/admin/secret", "loopback"),
        ("http://LOCALHOST./admin/secret", "loopback"),
        ("http://[::1]:8080/", "loopback"),
        ("http://10.0.0.5/", "private"),
        ("http://0x7f000001/", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://0177.1/", "loopback"),
        ("http://0x7f.0x0.0x0.0x1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[::ffff:a9fe:a9fe]/", "link-local"),
        ("http://0.0.0.0:9400/metrics", "unspecified"),
        ("https://metadata.google.internal/computeMetadata/v1/", "link-local"),
        ("http://internal.acme/", "private"),
        ("http://rebind.example/", "loopback"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
    ],
)
def test_ssrf_targets_fail_egress_denied_without_a_connection(url: str, kind: str) -> None:
    backend = Backend()
    result = call(action(backend), url)
    assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "egress_denied", False)
    assert f"{kind} address" in message_of(result)
    assert backend.connects == []


def test_a_dotted_octal_address_is_refused_as_input() -> None:
    """httpx itself refuses four-part IPv4 hosts with leading zeros (0177.0.0.1 is 127.0.0.1 to
    the C resolver): not a URL, so nothing is dialled either."""
    backend = Backend()
    result = call(action(backend), "http://0177.0.0.1/")
    assert (result["error_kind"], result["retryable"]) == ("invalid_input", False)
    assert backend.connects == []


def test_a_public_name_is_resolved_once_and_the_vetted_address_is_dialled_with_tls_for_the_name() -> None:
    backend, resolver = Backend(), Resolver()
    result = call(action(backend, resolver=resolver), "https://api.example/v1/x")
    assert result["status"] == "succeeded", result
    assert output_of(result)["json"] == {"ok": True}
    assert backend.connects == [("93.184.216.34", 443)]  # the address, not the name: no second lookup
    assert resolver.calls == ["api.example"]
    # TLS: SNI and certificate checks for the name, verification on.
    assert backend.tls == [("api.example", ssl.CERT_REQUIRED, True)]
    assert b"\r\nHost: api.example\r\n" in backend.written


def test_ipv6_public_addresses_are_dialled_as_addresses() -> None:
    backend = Backend()
    assert call(action(backend), "http://v6.example:8080/")["status"] == "succeeded"
    assert backend.connects == [("2606:4700:4700::1111", 8080)]


def test_an_unknown_name_is_a_retryable_transport_error() -> None:
    result = call(action(Backend()), "http://nowhere.example/")
    assert (result["error_kind"], result["retryable"]) == ("http_transport_error", True)
    assert "cannot resolve nowhere.example" in message_of(result)


def test_redirects_are_not_followed() -> None:
    backend = Backend(
        response=[b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1/admin\r\nContent-Length: 0\r\n\r\n"]
    )
    result = call(action(backend), "http://api.example/")
    assert (result["error_kind"], result["retryable"]) == ("http_302", False)
    assert backend.connects == [("93.184.216.34", 80)]  # one request: the Location was never visited


def test_the_allow_list_admits_its_tenant_only_and_pools_stay_apart() -> None:
    lists = {"acme": ["10.0.0.0/8", "localhost"]}
    backend = Backend()
    http = action(backend, EgressConfig(tenant_allow=lambda tenant: lists.get(tenant, [])))

    async def main() -> list[StepResult]:
        registry = ActionRegistry.load(builtins=False, entry_points=False)
        registry.register(http)
        results = []
        for tenant, url in [
            ("acme", "http://internal.acme/"),
            ("other", "http://internal.acme/"),  # acme's pooled connection must not serve it
            ("acme", "http://localhost/"),
            ("acme", "http://169.254.169.254/"),  # not listed
            ("acme", "http://127.0.0.1/"),  # the name localhost is listed, not the address
        ]:
            results.append(
                await execute_command(registry, command("http.request", {"url": url}, tenant=tenant))
            )
        await http.aclose()
        return results

    results = asyncio.run(main())
    assert [r["error_kind"] for r in results] == [
        None,
        "egress_denied",
        None,
        "egress_denied",
        "egress_denied",
    ]
    assert backend.connects == [("10.0.0.5", 80), ("127.0.0.1", 80)]


def test_the_engine_switch_admits_private_addresses() -> None:
    backend = Backend()
    result = call(action(backend, EgressConfig(allow_private=True)), "http://localhost:8080/")
    assert result["status"] == "succeeded"
    assert backend.connects == [("127.0.0.1", 8080)]


def test_configure_egress_replaces_the_policy() -> None:
    backend = Backend()
    http = action(backend)
    assert call(http, "http://10.0.0.5/")["error_kind"] == "egress_denied"
    http.configure_egress(EgressConfig(allow_private=True))
    assert call(http, "http://10.0.0.5/")["status"] == "succeeded"


def test_egress_refusals_never_open_the_circuit_breaker() -> None:
    backend = Backend()
    guards = Guardrails(breakers=CircuitBreakers(BreakerPolicy(2, 30.0)))
    http = action(backend)
    kinds = [call(http, "http://127.0.0.1/", guardrails=guards)["error_kind"] for _ in range(5)]
    assert kinds == ["egress_denied"] * 5  # never circuit_open


def test_a_body_over_the_cap_fails_response_too_large() -> None:
    size = MAX_RESPONSE_BYTES * 4
    head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n".encode()
    backend = Backend(response=[head] + [b"x" * 65536] * (size // 65536))
    result = call(action(backend), "http://api.example/")
    assert (result["error_kind"], result["retryable"]) == ("response_too_large", False)


class Table:
    """The tenants registry as the executor reads it."""

    def __init__(self, configs: dict[str, TenantConfig]) -> None:
        self.configs = configs

    def get(self, tenant: str) -> TenantConfig | None:
        return self.configs.get(tenant)


def test_the_executor_hands_the_switch_and_each_tenant_s_list_to_the_action() -> None:
    backend = Backend()
    http = action(backend)
    registry = ActionRegistry.load(builtins=False, entry_points=False)
    registry.register(http)
    table = Table({"acme": TenantConfig(tenant="acme", egress_allow=["10.0.0.0/8"])})
    configure_egress(registry, Settings(), table)  # type: ignore[arg-type]
    assert call(http, "http://10.0.0.5/", tenant="acme")["status"] == "succeeded"
    assert call(http, "http://10.0.0.5/", tenant="other")["error_kind"] == "egress_denied"
    table.configs["other"] = TenantConfig(tenant="other", egress_allow=["10.0.0.5"])  # read at each call
    assert call(http, "http://10.0.0.5/", tenant="other")["status"] == "succeeded"
    configure_egress(registry, Settings(egress_allow_private=True), None)
    assert call(http, "http://127.0.0.1/", tenant="anyone")["status"] == "succeeded"
    configure_egress(registry, Settings(), None)
    assert call(http, "http://127.0.0.1/", tenant="anyone")["error_kind"] == "egress_denied"


def test_pools_of_policies_no_longer_used_are_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_module, "MAX_POOLS", 3)
    closing = (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"  # no reuse of a canned stream
    )
    backend = Backend(response=[closing, b"ok"])
    http = action(backend, EgressConfig(tenant_allow=lambda tenant: [f"10.0.0.{tenant}"]))

    async def main() -> tuple[int, list[bool]]:
        registry = ActionRegistry.load(builtins=False, entry_points=False)
        registry.register(http)
        opened = []
        for tenant in ("1", "2", "3", "1", "4", "5"):  # 1 used again: 2 and 3 are the oldest
            url = f"http://10.0.0.{tenant}/"
            result = await execute_command(registry, command("http.request", {"url": url}, tenant=tenant))
            assert result["status"] == "succeeded", result
            opened.append(http._client(http._egress.policy_for(tenant)))
        await asyncio.sleep(0)  # let the closing tasks run
        pools = len(http._clients[asyncio.get_running_loop()])
        closed = [client.is_closed for client in opened]
        await http.aclose()
        return pools, closed

    pools, closed = asyncio.run(main())
    assert pools == 3
    assert closed == [False, True, True, False, False, False]
