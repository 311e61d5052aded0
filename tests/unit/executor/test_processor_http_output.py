"""``http.request`` outputs are decoded strictly: a remote server's response is attacker-controlled
and must never put lone surrogates, NaN or an unbounded body into a step's output."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from services.actions.http import MAX_RESPONSE_BYTES, HttpRequest
from services.contracts.records import StepResult
from services.executor import ActionRegistry, execute_command
from tests.unit.executor.helpers import command, message_of, output_of


def call(handler: Any) -> StepResult:
    registry = ActionRegistry.load(builtins=False, entry_points=False)
    registry.register(HttpRequest(transport=httpx.MockTransport(handler)))
    return asyncio.run(execute_command(registry, command("http.request", {"url": "http://h/"})))


def json_response(body: bytes, content_type: str = "application/json") -> Any:
    return lambda request: httpx.Response(200, content=body, headers={"content-type": content_type})


def test_a_json_body_with_a_lone_surrogate_is_not_json_and_comes_back_as_text() -> None:
    result = call(json_response(b'{"note": "\\ud800"}'))
    assert result["status"] == "succeeded"
    output = output_of(result)
    assert "json" not in output and output["text"] == '{"note": "\\ud800"}'


def test_nan_and_infinity_in_a_json_body_are_not_json() -> None:
    for body in (b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1e999}', b"[" * 100 + b"]" * 100):
        output = output_of(call(json_response(body)))
        assert "json" not in output and output["text"] == body.decode()


def test_a_strict_json_body_is_returned_as_json() -> None:
    output = output_of(call(json_response(b'{"a": [1, 2.5, "\xc3\xa9"]}')))
    assert output["json"] == {"a": [1, 2.5, "é"]}


def test_a_charset_that_decodes_to_surrogates_cannot_smuggle_them_into_text() -> None:
    result = call(json_response(b"\\ud800 hello", "text/plain; charset=unicode_escape"))
    assert result["status"] == "succeeded"
    text = result["output_json"]
    assert text is not None
    text.encode("utf-8")
    assert json.loads(text)["text"] == "\\ud800 hello"  # visible escape, not a surrogate


def test_a_body_over_the_limit_fails_without_being_kept() -> None:
    result = call(json_response(b"x" * (MAX_RESPONSE_BYTES + 1), "text/plain"))
    assert (result["status"], result["error_kind"], result["retryable"]) == (
        "failed",
        "response_too_large",
        False,
    )


def test_an_error_body_over_the_limit_still_gives_its_status() -> None:
    result = call(lambda request: httpx.Response(503, content=b"e" * (MAX_RESPONSE_BYTES * 2)))
    assert (result["error_kind"], result["retryable"]) == ("http_503", True)
    assert len(message_of(result)) < 1000
