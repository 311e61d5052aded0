"""Built-in actions: input validation and semantics."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.actions import Echo, Fail, HttpRequest, Noop, Sleep
from services.contracts.records import StepCommand, StepResult
from services.executor import ActionError, ActionRegistry, execute_command
from services.executor.plugins import ActionContext
from services.observability.logs import bind
from tests.unit.executor.helpers import command, message_of, output_of


def ctx(attempt: int = 1) -> ActionContext:
    import logging

    return ActionContext(
        tenant="acme",
        run_id="r",
        step_id="s",
        attempt=attempt,
        idempotency_key=f"r:s:{attempt}",
        deadline=1e12,
        correlation_id="c",
        log=bind(logging.getLogger("test")),
    )


def run(cmd: StepCommand, registry: ActionRegistry | None = None) -> StepResult:
    return asyncio.run(execute_command(registry or ActionRegistry.load(entry_points=False), cmd))


def test_noop_returns_empty_and_ignores_inputs() -> None:
    assert asyncio.run(Noop().run(ctx(), Noop.Input.model_validate({"anything": 1}))) == {}


def test_echo_returns_any_fields() -> None:
    inputs = Echo.Input.model_validate({"a": 1, "nested": {"b": [1, "x"]}})
    assert asyncio.run(Echo().run(ctx(), inputs)) == {"a": 1, "nested": {"b": [1, "x"]}}


@pytest.mark.parametrize("bad", [{}, {"seconds": -1}, {"seconds": "soon"}, {"seconds": 1, "extra": 2}])
def test_sleep_input_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Sleep.Input.model_validate(bad)


def test_invalid_input_fails_non_retryably_with_the_field_named() -> None:
    result = run(command("sleep", {"seconds": "soon"}))
    assert result["status"] == "failed"
    assert result["error_kind"] == "invalid_input"
    assert result["retryable"] is False
    assert "seconds" in message_of(result)


def test_fail_always_fails_with_its_kind() -> None:
    inputs = Fail.Input.model_validate({"error_kind": "boom", "message": "no", "retryable": False})
    with pytest.raises(ActionError) as info:
        asyncio.run(Fail().run(ctx(attempt=7), inputs))
    assert (info.value.kind, info.value.message, info.value.retryable) == ("boom", "no", False)


def test_fail_defaults() -> None:
    result = run(command("fail", {}))
    assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "action_error", True)


def test_fail_attempts_fails_then_succeeds() -> None:
    inputs = {"fail_attempts": 2, "message": "flaky"}
    outcomes = [run(command("fail", inputs, attempt=n)) for n in (1, 2, 3, 4)]
    assert [r["status"] for r in outcomes] == ["failed", "failed", "succeeded", "succeeded"]
    assert outcomes[0]["error_message"] == "flaky"
    assert output_of(outcomes[2]) == {"succeeded_on_attempt": 3}


def test_fail_attempts_zero_never_fails() -> None:
    assert run(command("fail", {"fail_attempts": 0}))["status"] == "succeeded"


def _http(handler: Any) -> ActionRegistry:
    registry = ActionRegistry.load(builtins=False, entry_points=False)
    registry.register(HttpRequest(transport=httpx.MockTransport(handler)))
    return registry


def test_http_request_success_json_and_idempotency_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"ok": True, "echo": json.loads(request.content)})

    result = run(
        command("http.request", {"method": "post", "url": "https://api.example/x", "json": {"a": 1}}),
        _http(handler),
    )
    assert result["status"] == "succeeded", result
    output = output_of(result)
    assert output["status"] == 201
    assert output["json"] == {"ok": True, "echo": {"a": 1}}
    assert seen[0].method == "POST"
    assert seen[0].headers["Idempotency-Key"] == "run-1:s1:1"
    assert seen[0].headers["X-Correlation-Id"] == "corr-1"


def test_http_request_text_body() -> None:
    result = run(
        command("http.request", {"url": "http://h/"}),
        _http(lambda r: httpx.Response(200, text="hello", headers={"content-type": "text/plain"})),
    )
    assert output_of(result)["text"] == "hello"


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (404, False), (400, False)]
)
def test_http_request_non_2xx(status: int, retryable: bool) -> None:
    result = run(command("http.request", {"url": "http://h/"}), _http(lambda r: httpx.Response(status)))
    assert result["status"] == "failed"
    assert result["error_kind"] == f"http_{status}"
    assert result["retryable"] is retryable


def test_http_request_transport_error_is_retryable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    result = run(command("http.request", {"url": "http://h/"}), _http(handler))
    assert (result["error_kind"], result["retryable"]) == ("http_transport_error", True)


@pytest.mark.parametrize("url", ["ftp://h/x", "not a url", "/relative"])
def test_http_request_rejects_non_http_urls(url: str) -> None:
    with pytest.raises(ValidationError):
        HttpRequest.Input.model_validate({"url": url})
