"""The executor resolves secret references just before the action runs, and keeps the values out
of the result and of log lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from typing import Any

from pydantic import BaseModel, ConfigDict

from services.contracts.records import StepResult
from services.executor.execute import execute_command
from services.executor.plugins import ActionContext, ActionError, ActionRegistry, BaseAction
from services.observability.logs import JsonFormatter
from services.secrets.providers import EnvProvider, SecretResolver
from tests.unit.executor.helpers import command, message_of, output_of

TOKEN = "tok-7f3a9c1e55"
RESOLVER = SecretResolver((EnvProvider({"SWITCHYARD_SECRET_acme_API_TOKEN": TOKEN}),))
SEEN: list[dict[str, Any]] = []


class Anything(BaseModel):
    model_config = ConfigDict(extra="allow")


class Leaky(BaseAction):
    """Records its inputs, logs them, echoes them, and fails quoting them when asked to."""

    name = "test.leaky"
    Input = Anything

    async def run(self, ctx: ActionContext, inputs: Anything, /) -> dict[str, Any]:
        data = inputs.model_dump(mode="json")
        SEEN.append(data)
        ctx.log.info("calling with %s", data)
        if data.get("fail") == "action_error":
            raise ActionError("http_401", f"refused {data}", retryable=False)
        if data.get("fail") == "crash":
            raise RuntimeError(f"crashed on {data}")
        return {"echo": data, TOKEN: "as a key"}


def execute(inputs: dict[str, Any]) -> StepResult:
    registry = ActionRegistry.load(extra=[Leaky()], builtins=False, entry_points=False)
    result = asyncio.run(execute_command(registry, command("test.leaky", inputs), secrets=RESOLVER))
    return result


def test_the_action_receives_the_value_and_the_result_never_holds_it() -> None:
    SEEN.clear()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    try:
        ok = execute({"auth": "Bearer ${{ secrets.API_TOKEN }}", "n": 5})
        failed = execute({"auth": "${{ secrets.API_TOKEN }}", "fail": "action_error"})
        crashed = execute({"auth": "${{ secrets.API_TOKEN }}", "fail": "crash"})
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert SEEN[0] == {"auth": f"Bearer {TOKEN}", "n": 5}
    assert ok["status"] == "succeeded"
    assert output_of(ok)["echo"]["auth"] == "Bearer [redacted]"
    assert failed["error_kind"] == "http_401" and "refused" in message_of(failed)
    assert crashed["error_kind"] == "action_error"
    logged = stream.getvalue()
    assert "calling with" in logged and "crashed on" in logged
    for text in (json.dumps(ok), json.dumps(failed), json.dumps(crashed), logged):
        assert TOKEN not in text


def test_a_missing_secret_fails_the_step_without_running_the_action() -> None:
    SEEN.clear()
    result = execute({"auth": "${{ secrets.NOT_THERE }} ${{ secrets.API_TOKEN }}"})
    assert (result["error_kind"], result["retryable"]) == ("secret_missing", False)
    assert "NOT_THERE" in message_of(result) and TOKEN not in message_of(result)
    assert SEEN == []


def test_data_spelling_a_reference_reaches_the_action_as_text() -> None:
    SEEN.clear()
    execute({"comment": "$${{ secrets.API_TOKEN }}"})  # how the router writes such trigger data
    assert SEEN == [{"comment": "${{ secrets.API_TOKEN }}"}]
