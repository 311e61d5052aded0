"""firm.get_record / firm.query without a database: scopes, the context rule, bounds, the SQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from services.actions import builtin_actions
from services.actions.firm import (
    MAX_FILTERS,
    GetRecord,
    GetRecordInput,
    Query,
    QueryInput,
    ReadLimits,
    check_result_size,
    query_limit,
    query_output,
    query_statement,
    record_output,
)
from services.config import Settings
from services.contracts.records import StepCommand, StepResult
from services.executor import ActionContext, ActionRegistry, BaseAction, execute_command
from services.executor.guardrails import Guardrails
from services.executor.permissions import required_scopes
from services.executor.plugins import ActionError, ActionLoadError, mutates
from services.workflow.actions import BUILTIN_ACTIONS, BUILTIN_READ_ACTIONS
from tests.unit.executor.helpers import command, message_of

# A URL nothing listens on: a read that got past its checks would fail firm_db_unavailable.
NOWHERE = "postgresql://nobody@127.0.0.1:9/none?connect_timeout=1"


def run(reg: ActionRegistry, cmd: StepCommand, **kwargs: Any) -> StepResult:
    return asyncio.run(execute_command(reg, cmd, **kwargs))


def reads() -> ActionRegistry:
    return ActionRegistry.load(builtins=False, entry_points=False, extra=[GetRecord(NOWHERE), Query(NOWHERE)])


def test_reads_need_firm_data_read_and_do_not_mutate() -> None:
    for action in (GetRecord(), Query()):
        assert required_scopes(action) == {"firm_data:read"}
        assert not mutates(action) and not action.mutates_firm_data


def test_builtin_read_actions_are_exactly_those_that_declare_no_mutation() -> None:
    actions = {a.name: a for a in builtin_actions()}
    assert set(actions) == BUILTIN_ACTIONS
    assert {name for name, a in actions.items() if not mutates(a)} == BUILTIN_READ_ACTIONS


@pytest.mark.parametrize(
    ("declared", "granted", "reason"),
    [
        ([], {"firm_data:read"}, "does not declare"),
        (["firm_data:write"], {"firm_data:write", "firm_data:read"}, "does not declare"),
        (["firm_data:read"], {"firm_data:write"}, "not granted"),
        (["firm_data:read"], None, "not in the tenants registry"),
    ],
)
@pytest.mark.parametrize("action", ["firm.get_record", "firm.query"])
def test_a_read_without_the_scope_is_denied_before_any_connection(
    action: str, declared: list[str], granted: set[str] | None, reason: str
) -> None:
    guards = Guardrails(grants=lambda tenant: None if granted is None else frozenset(granted))
    inputs = (
        {"record_type": "client", "id": "c-1"} if action == "firm.get_record" else {"record_type": "client"}
    )
    result = run(reads(), command(action, inputs, scopes=declared), guardrails=guards)
    assert (result["status"], result["error_kind"], result["retryable"]) == (
        "failed",
        "permission_denied",
        False,
    )
    assert reason in message_of(result)


def test_with_the_scope_the_read_reaches_the_database() -> None:
    guards = Guardrails(grants=lambda tenant: frozenset({"firm_data:read"}))
    cmd = command("firm.get_record", {"record_type": "client", "id": "c-1"}, scopes=["firm_data:read"])
    result = run(reads(), cmd, guardrails=guards)
    assert result["error_kind"] == "firm_db_unavailable" and result["retryable"] is True


class AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class Plugin(BaseAction):
    """A plugin that says nothing about mutation: assumed to mutate."""

    name = "crm.lookup"
    Input = AnyInput

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, ctx: ActionContext, inputs: Any, /) -> dict[str, Any]:
        self.runs += 1
        return {}


class ReadOnlyPlugin(Plugin):
    name = "crm.read"
    mutates = False


def test_a_context_step_runs_only_an_action_that_declares_it_does_not_mutate() -> None:
    plugin, reader = Plugin(), ReadOnlyPlugin()
    reg = ActionRegistry.load(builtins=False, entry_points=False, extra=[plugin, reader])
    refused = run(reg, command("crm.lookup", step_id="context.client"))
    assert (refused["error_kind"], refused["retryable"]) == ("context_not_read_only", False)
    assert "does not declare mutates = False" in message_of(refused) and plugin.runs == 0
    assert run(reg, command("crm.lookup", step_id="client"))["status"] == "succeeded"  # a step may
    assert run(reg, command("crm.read", step_id="context.client"))["status"] == "succeeded"
    assert reader.runs == 1


def test_an_action_that_mutates_firm_data_cannot_claim_not_to_mutate() -> None:
    class Liar(Plugin):
        name = "firm.liar"
        mutates_firm_data = True
        mutates = False

    with pytest.raises(ActionLoadError, match="an action that changes firm data mutates"):
        ActionRegistry.load(builtins=False, entry_points=False, extra=[Liar()])


def test_query_inputs_are_bounded() -> None:
    with pytest.raises(ValidationError):
        QueryInput.model_validate(
            {"record_type": "client", "where": {f"f{i}": 1 for i in range(MAX_FILTERS + 1)}}
        )
    with pytest.raises(ValidationError):
        QueryInput.model_validate({"record_type": "client", "where": {"a": {"nested": 1}}})
    with pytest.raises(ValidationError):
        QueryInput.model_validate({"record_type": "client", "limit": 0})
    with pytest.raises(ValidationError):
        GetRecordInput.model_validate({"record_type": "Client; DROP", "id": "x"})
    assert query_limit(QueryInput(record_type="c"), 500) == 100
    assert query_limit(QueryInput(record_type="c"), 20) == 20
    assert query_limit(QueryInput(record_type="c", limit=500), 500) == 500
    with pytest.raises(ActionError) as info:
        query_limit(QueryInput(record_type="c", limit=501), 500)
    assert (info.value.kind, info.value.retryable) == ("invalid_input", False)
    assert "SWITCHYARD_FIRM_QUERY_MAX_ROWS (500)" in info.value.message


def test_the_query_is_parameterised_and_scoped_to_the_tenant() -> None:
    inputs = QueryInput(
        record_type="client", where={"office": "x'; DROP TABLE firm_records; --", "active": True}
    )
    statement, params = query_statement("acme", inputs, 10, 4096)
    text = statement.as_string(None)
    assert "DROP" not in text and "office" not in text  # values and names travel as parameters
    assert "WHERE tenant = %s AND record_type = %s AND fields -> %s = %s AND fields -> %s = %s" in text
    assert params[0] == 4096 and params[1:3] == ["acme", "client"]
    assert params[3] == "active" and params[5] == "office" and params[-1] == 11  # limit + 1 tells truncated


def rows(n: int, upto_each: int = 10) -> list[tuple[Any, ...]]:
    return [(f"c-{i}", 1, {"i": i}, upto_each * (i + 1)) for i in range(n)]


def test_query_output_says_when_more_records_matched_than_the_limit() -> None:
    out = query_output("client", rows(3), 3, 1000)
    assert (out["count"], out["truncated"]) == (3, False)
    assert out["records"][0] == {"id": "c-0", "version": 1, "fields": {"i": 0}}
    out = query_output("client", rows(4), 3, 1000)
    assert (out["count"], out["truncated"]) == (3, True)
    # The extra row past the limit may come without its fields (past the bound): still just "more".
    assert query_output("client", [*rows(3), ("c-9", 1, None, 5000)], 3, 1000)["truncated"] is True


def test_query_over_the_byte_bound_fails_not_retryable() -> None:
    with pytest.raises(ActionError) as info:
        query_output("client", [*rows(2), ("c-9", 1, None, 5000)], 3, 1000)
    assert (info.value.kind, info.value.retryable) == ("result_too_large", False)
    assert "5000 bytes" in info.value.message and "narrow the query" in info.value.message
    with pytest.raises(ActionError, match="result_too_large"):
        check_result_size({"blob": "x" * 2000}, 1024)
    check_result_size({"blob": "x" * 100}, 1024)


def test_record_output() -> None:
    inputs = GetRecordInput(record_type="client", id="c-1")
    out = record_output(inputs, (3, 40, {"name": "Ada", "id": "clash", "found": "clash"}), 1024)
    assert out["name"] == "Ada" and out["id"] == "c-1" and out["found"] is True and out["version"] == 3
    assert out["fields"] == {"name": "Ada", "id": "clash", "found": "clash"}
    with pytest.raises(ActionError) as info:
        record_output(inputs, None, 1024)
    assert (info.value.kind, info.value.retryable) == ("not_found", False)
    missing = record_output(GetRecordInput(record_type="client", id="c-1", missing_ok=True), None, 1024)
    assert missing == {"found": False, "id": "c-1", "record_type": "client"}
    with pytest.raises(ActionError) as info:
        record_output(inputs, (3, 9000, None), 1024)
    assert info.value.kind == "result_too_large" and "9000 bytes" in info.value.message


def test_read_limits_follow_the_settings_and_the_attempt_deadline() -> None:
    settings = Settings(firm_read_max_rows=7, firm_read_max_bytes=2048, firm_statement_timeout_ms=5000)
    limits = ReadLimits.of(settings, remaining_s=30.0)
    assert (limits.max_rows, limits.max_bytes, limits.statement_timeout_ms) == (7, 2048, 5000)
    assert ReadLimits.of(settings, remaining_s=1.5).statement_timeout_ms == 1500
    assert ReadLimits.of(settings, remaining_s=0.0).statement_timeout_ms == 100  # 0 would mean "none"
