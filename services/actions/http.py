"""``http.request``: one HTTP call with httpx, passing the attempt's idempotency key along.

Output: ``{"status", "headers", "json"}`` when the response body is JSON, else
``{"status", "headers", "text"}``. A non-2xx status fails with error kind ``http_<status>``,
retryable for 5xx and 429 only. Transport failures (connect, read, timeouts) are retryable, kind
``http_timeout`` or ``http_transport_error``. Unless the step sets them itself, the request carries
``Idempotency-Key`` and ``X-Correlation-Id`` headers, so that the receiving side can deduplicate
the at-least-once attempts.

It is ``external``: calls wait for the tenant's external-call rate limit, and a circuit breaker per
(tenant, URL host:port) fails calls fast while that host keeps failing.

One ``httpx.AsyncClient`` (connection pool) is kept per event loop.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.executor.plugins import ActionContext, ActionError, BaseAction

MAX_ERROR_BODY = 500


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

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._transport = transport
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(transport=self._transport, follow_redirects=False)
            self._clients[loop] = client
        return client

    def target(self, inputs: HttpRequestInput) -> str:
        """The circuit breaker target: the URL's host (with its port when explicit)."""
        url = httpx.URL(inputs.url)
        return f"{url.host}:{url.port}" if url.port else url.host

    async def run(self, ctx: ActionContext, inputs: HttpRequestInput, /) -> dict[str, Any]:
        headers = {"Idempotency-Key": ctx.idempotency_key, "X-Correlation-Id": ctx.correlation_id}
        headers.update(inputs.headers)
        request: dict[str, Any] = {"headers": headers, "timeout": inputs.timeout}
        if inputs.json_body is not None:
            request["json"] = inputs.json_body
        try:
            response = await self._client().request(inputs.method, inputs.url, **request)
        except httpx.TimeoutException as exc:
            raise ActionError("http_timeout", f"{inputs.method} {inputs.url}: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            raise ActionError(
                "http_transport_error", f"{inputs.method} {inputs.url}: {type(exc).__name__}: {exc}"
            ) from exc
        status = response.status_code
        if not 200 <= status < 300:
            raise ActionError(
                f"http_{status}",
                f"{inputs.method} {inputs.url} returned {status}: {response.text[:MAX_ERROR_BODY]}",
                retryable=status >= 500 or status == 429,
            )
        output: dict[str, Any] = {"status": status, "headers": dict(response.headers)}
        if "json" in response.headers.get("content-type", "") and response.content:
            try:
                output["json"] = response.json()
                return output
            except ValueError:
                pass
        output["text"] = response.text
        return output

    async def aclose(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
