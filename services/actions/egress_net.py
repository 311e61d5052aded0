"""Connections only to vetted addresses: the network side of the egress policy of ``http.request``.

:class:`VettedBackend` is an httpcore network backend: asked for ``host:port``, it resolves the
host once (numeric forms such as ``0x7f000001`` without a lookup), vets every address with the
:class:`~services.actions.egress.EgressPolicy`, and connects to a vetted *address*, so nothing
can re-resolve the name between the check and the connection (DNS rebinding). The request keeps
its URL: the ``Host`` header, TLS SNI and certificate verification are still those of the host
name (httpcore starts TLS with the URL's host as ``server_hostname``).

:class:`VettedTransport` is ``httpx.AsyncHTTPTransport`` over that backend, ignoring proxy
environment variables (a proxy would resolve names itself, past the policy).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

from services.actions.egress import EgressPolicy, IPAddress, literal_address

Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
"""Host and port → the addresses to try, in order (raises ``OSError`` when the name is unknown)."""


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """The operating system's resolver (``getaddrinfo``, in a worker thread)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in found:
            found.append(address)
    return found


class VettedBackend(httpcore.AsyncNetworkBackend):
    """Resolve, vet, connect to the vetted address (see the module docstring)."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self._resolve = resolver
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def addresses(self, host: str, port: int, within: float | None = None) -> list[IPAddress]:
        """What ``host`` means: itself when it is numeric, else what the resolver returns."""
        literal = literal_address(host)
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(within):
                found = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {within}s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not found:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return found

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        vetted = self.policy.vet(host, await self.addresses(host, port, timeout))
        error: Exception | None = None
        for address in vetted:
            try:
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc  # the next address of the name may answer
        assert error is not None  # vet() never returns an empty list for a non-empty one
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("http.request does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def _verifying_context() -> ssl.SSLContext:
    """httpx's default TLS context (certificates and host names verified), built once: loading
    the CA bundle costs tens of milliseconds, and each egress policy has its own pool."""
    return httpx.create_ssl_context(trust_env=False)


class VettedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` (default limits, TLS verified) whose connections go through a
    :class:`VettedBackend`."""

    def __init__(self, backend: VettedBackend, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(trust_env=False)
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
        # httpx does not pass a network backend through to httpcore: build its pool the way it
        # does (no proxy), with ours. tests/unit/actions checks that requests reach the backend.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context if ssl_context is not None else _verifying_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
        self.backend = backend
