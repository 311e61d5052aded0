"""``http.request``: one HTTP call with httpx, passing the attempt's idempotency key along.

Output: ``{"status", "headers", "json"}`` when the response body is JSON, else
``{"status", "headers", "text"}``. The body is decoded strictly: a JSON body with lone surrogates,
``NaN``/infinities or more than 64 levels of nesting is not JSON here and comes back as ``text``
(the server is not trusted: such values could not be written into run state). At most
``MAX_RESPONSE_BYTES`` of body are read, after decoding, and no more than that is ever inflated
(:mod:`services.actions.body`); a longer body fails with ``response_too_large`` (not retryable)
without being held in memory. A body that does not decode fails ``http_decoding_error``. A
non-2xx status fails with error kind ``http_<status>``, retryable for 5xx and 429 only.
Transport failures (connect, read, timeouts) are retryable, kind ``http_timeout`` or
``http_transport_error``. Unless the step sets them itself, the request carries
``Idempotency-Key`` and ``X-Correlation-Id`` headers, so that the receiving side can deduplicate
the at-least-once attempts.

Egress (:mod:`services.actions.egress`): the host is resolved once and the connection goes to
an address the tenant's egress policy admits (:mod:`services.actions.egress_net`); loopback,
private, link-local, multicast, unspecified and reserved addresses are refused with error kind
``egress_denied`` (not retryable; the target was never contacted, so the circuit breaker does not
count it as a failure) unless the tenant's allow-list (``TenantConfig.egress_allow``) or the
engine-wide development switch ``SWITCHYARD_EGRESS_ALLOW_PRIVATE`` admits them. The executor
passes both through :meth:`HttpRequest.configure_egress`. Redirects are never followed (a 3xx is
an ``http_3xx`` failure), so no second host escapes the check.

It is ``external``: calls wait for the tenant's external-call rate limit, and a circuit breaker per
(tenant, URL host:port) fails calls fast while that host keeps failing.

One ``httpx.AsyncClient`` (connection pool) is kept per event loop and egress policy (at most
``MAX_POOLS``, least recently used closed first), so a connection opened under one tenant's
allow-list never carries another tenant's request.
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from typing import Any, Literal, TypedDict

import httpcore
import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.actions.body import ACCEPT_ENCODING, UnsupportedEncoding, read_bounded
from services.actions.egress import EgressConfig, EgressDenied, EgressPolicy
from services.actions.egress_net import Resolver, VettedBackend, VettedTransport, system_resolver
from services.contracts import strict_json
from services.contracts.records import JsonObject
from services.contracts.text import utf8_safe
from services.executor.plugins import ActionContext, ActionError, BaseAction

MAX_ERROR_BODY = 500
#: Most body bytes read: the executor refuses outputs over 512 KiB anyway.
MAX_RESPONSE_BYTES = 512 * 1024
#: Connection pools kept per event loop, one per egress policy in use (tenants with equal
#: allow-lists share one).
MAX_POOLS = 64


class _RequestOptions(TypedDict, total=False):
    """What a request passes to ``httpx.AsyncClient.stream`` besides its method and URL."""

    headers: dict[str, str]
    timeout: float
    json: Any  # the step's request body: tenant JSON


class HttpRequestInput(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json", description="JSON request body (optional).")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds; the step deadline also applies.")

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except (httpx.InvalidURL, TypeError) as exc:
            raise ValueError(f"not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("must be an absolute http:// or https:// URL")
        return value


class HttpRequest(BaseAction):
    """Makes one HTTP request."""

    name = "http.request"
    Input = HttpRequestInput
    external = True

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        egress: EgressConfig | None = None,
        resolver: Resolver = system_resolver,
        network_backend: httpcore.AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``transport`` replaces the network entirely, egress policy included (unit tests);
        ``resolver`` and ``network_backend`` replace the resolver and the sockets under the policy;
        ``ssl_context`` the TLS settings (default: certificates and host names verified against
        certifi's CAs)."""
        self._transport = transport
        self._ssl_context = ssl_context
        self._egress = egress if egress is not None else EgressConfig()
        self._resolver = resolver
        self._network_backend = network_backend
        self._closing: set[asyncio.Task[None]] = set()
        # Requests still running, kept referenced (an abandoned one finishes in the background).
        self._exchanges: set[asyncio.Future[Any]] = set()
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[EgressPolicy, httpx.AsyncClient]
        ] = weakref.WeakKeyDictionary()

    def configure_egress(self, egress: EgressConfig) -> None:
        """The engine-wide switch and the tenants' allow-lists (the executor calls this at start)."""
        self._egress = egress

    def _client(self, policy: EgressPolicy) -> httpx.AsyncClient:
        clients = self._clients.setdefault(asyncio.get_running_loop(), {})
        client = clients.pop(policy, None)  # re-inserted below: the dict runs least recently used first
        if client is None:
            transport = self._transport
            if transport is None:
                backend = VettedBackend(policy, self._resolver, self._network_backend)
                transport = VettedTransport(backend, self._ssl_context)
            client = httpx.AsyncClient(
                transport=transport,
                follow_redirects=False,
                trust_env=False,
                headers={"Accept-Encoding": ACCEPT_ENCODING},  # what read_bounded decodes
            )
        clients[policy] = client
        while len(clients) > MAX_POOLS:
            # Allow-lists that changed leave pools behind. The least recently used is closed: a
            # request still running on it (unlikely after MAX_POOLS others) fails retryably.
            stale = clients.pop(next(iter(clients)))
            task = asyncio.get_running_loop().create_task(stale.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return client

    def target(self, inputs: HttpRequestInput) -> str:
        """The circuit breaker target: the URL's host (with its port when explicit)."""
        url = httpx.URL(inputs.url)
        return f"{url.host}:{url.port}" if url.port else url.host

    async def run(self, ctx: ActionContext, inputs: HttpRequestInput, /) -> JsonObject:
        headers = {"Idempotency-Key": ctx.idempotency_key, "X-Correlation-Id": ctx.correlation_id}
        headers.update(inputs.headers)
        request: _RequestOptions = {"headers": headers, "timeout": inputs.timeout}
        if inputs.json_body is not None:
            request["json"] = inputs.json_body
        try:
            client = self._client(self._egress.policy_for(ctx.tenant))
            exchange = asyncio.ensure_future(self._exchange(client, inputs, request))
            self._exchanges.add(exchange)
            exchange.add_done_callback(self._exchange_done)
            # Shielded: cancelling the attempt (its deadline, a cancelled or failed run) must not
            # cancel the request inside httpx. httpcore's pool loses track of a request cancelled
            # mid-flight and keeps its connection "active" for good (measured: 75 of the 100
            # slots after 8 bursts of cancellations, then every call waits the pool timeout and
            # fails http_timeout, which opens the circuit on a healthy target). The attempt ends
            # at once; the exchange finishes in the background within ``inputs.timeout`` and
            # gives its connection back.
            response, body, complete = await asyncio.shield(exchange)
        except EgressDenied as exc:
            raise ActionError(
                "egress_denied", f"{inputs.method} {inputs.url}: {exc}", retryable=False
            ) from exc
        except (httpx.DecodingError, UnsupportedEncoding) as exc:
            raise ActionError(
                "http_decoding_error",
                f"{inputs.method} {inputs.url}: {type(exc).__name__}: {exc}",
                retryable=False,
            ) from exc
        except httpx.PoolTimeout as exc:
            # Every pooled connection busy (the pool is shared by the tenants of one egress policy):
            # not the target's doing, so not held against its breaker.
            raise ActionError(
                "http_timeout", f"{inputs.method} {inputs.url}: {type(exc).__name__}", reached_target=False
            ) from exc
        except httpx.TimeoutException as exc:
            raise ActionError("http_timeout", f"{inputs.method} {inputs.url}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise ActionError(
                "http_transport_error", f"{inputs.method} {inputs.url}: {type(exc).__name__}: {exc}"
            ) from exc
        status = response.status_code
        if not complete and 200 <= status < 300:
            raise ActionError(
                "response_too_large",
                f"{inputs.method} {inputs.url} returned more than {MAX_RESPONSE_BYTES} bytes of body",
                retryable=False,
            )
        text = _text(response, body)
        if not 200 <= status < 300:
            raise ActionError(
                f"http_{status}",
                f"{inputs.method} {inputs.url} returned {status}: {text[:MAX_ERROR_BODY]}",
                retryable=status >= 500 or status == 429,
            )
        output: JsonObject = {"status": status, "headers": dict(response.headers)}
        if "json" in response.headers.get("content-type", "") and body:
            try:
                output["json"] = strict_json.loads(body, "response body")
                return output
            except strict_json.StrictJSONError:
                pass
        output["text"] = text
        return output

    @staticmethod
    async def _exchange(
        client: httpx.AsyncClient, inputs: HttpRequestInput, request: _RequestOptions
    ) -> tuple[httpx.Response, bytes, bool]:
        async with client.stream(inputs.method, inputs.url, **request) as response:
            body, complete = await read_bounded(response, MAX_RESPONSE_BYTES)
        return response, body, complete

    def _exchange_done(self, exchange: asyncio.Future[Any]) -> None:
        self._exchanges.discard(exchange)
        if not exchange.cancelled():
            exchange.exception()  # retrieved: an abandoned exchange's failure is no one's to report

    async def aclose(self) -> None:
        for client in self._clients.pop(asyncio.get_running_loop(), {}).values():
            await client.aclose()


def _text(response: httpx.Response, body: bytes) -> str:
    """The body as text in its declared charset, undecodable bytes replaced; a charset such as
    ``unicode_escape`` could still yield lone surrogates, which are escaped."""
    return utf8_safe(body.decode(response.encoding or "utf-8", errors="replace"))
