"""The ACL plan: each role gets what its service touches and nothing it must not (pure, no broker)."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from services.bus.topics import TENANT_ID, Topics
from services.config import Settings
from services.tenancy import acl

T = Topics("wf")
INTERNAL = [T.inbox, T.commands, T.events, T.router_state, T.dlq, T.control, T.definitions, T.tenants]
tenant_ids = st.from_regex(TENANT_ID, fullmatch=True)


def allowed(
    role: acl.Role, operation: str, resource: acl.Resource, name: str, tenant: str | None = None
) -> bool:
    return any(g.operation == operation and g.covers(resource, name) for g in acl.plan(role, T, tenant))


def writable(role: acl.Role, tenant: str | None = None) -> set[str]:
    names = INTERNAL + [T.tenant_triggers(t) for t in ("acme", "globex")]
    return {n for n in names if allowed(role, "WRITE", "topic", n, tenant)}


def readable(role: acl.Role, tenant: str | None = None) -> set[str]:
    names = INTERNAL + [T.tenant_triggers(t) for t in ("acme", "globex")]
    return {n for n in names if allowed(role, "READ", "topic", n, tenant)}


def test_router_reads_its_inputs_and_writes_its_outputs() -> None:
    assert readable("router") == {
        T.tenant_triggers("acme"),
        T.tenant_triggers("globex"),
        T.control,
        T.inbox,
        T.router_state,
        T.tenants,
        T.definitions,
    }
    assert writable("router") == {T.inbox, T.commands, T.events, T.router_state, T.dlq}
    for group in ("wf.router.core", "wf.router.intake", "wf.router-restore", "wf.registry-reader"):
        assert allowed("router", "READ", "group", group)
    assert allowed("router", "WRITE", "transactional_id", "wf.router.core.r1")
    assert allowed("router", "WRITE", "transactional_id", "wf.router.intake.r1")
    assert not allowed("router", "WRITE", "transactional_id", "wf.executor.e1")
    for compacted in (T.router_state, T.tenants, T.definitions):
        assert allowed("router", "DESCRIBE_CONFIGS", "topic", compacted)


def test_executor_reads_commands_and_events_and_writes_results_only() -> None:
    assert readable("executor") == {T.commands, T.tenants, T.events}
    assert writable("executor") == {T.inbox, T.dlq}
    assert allowed("executor", "READ", "group", "wf.executor")
    assert allowed("executor", "READ", "group", "wf.executor-cancellation.e1")
    assert allowed("executor", "WRITE", "transactional_id", "wf.executor.e1")
    assert not allowed("executor", "WRITE", "transactional_id", "wf.router.core.r1")
    assert not allowed("executor", "READ", "group", "wf.router.core")


def test_projector_only_reads() -> None:
    assert readable("projector") == {T.events, T.dlq, T.tenants}
    assert writable("projector") == set()
    assert not any(g.resource == "transactional_id" for g in acl.plan("projector", T))


def test_operator_writes_control_and_nothing_else() -> None:
    assert acl.plan("operator", T) == [acl.Grant("topic", "literal", T.control, "WRITE")]


def test_console_writes_control_and_triggers_and_reads_only_definitions() -> None:
    # the webhook endpoint produces for whichever tenant's token a request carries
    assert writable("console") == {T.control, T.tenant_triggers("acme"), T.tenant_triggers("globex")}
    assert readable("console") == {T.definitions}
    assert not any(g.resource == "transactional_id" for g in acl.plan("console", T))


def test_nobody_but_the_admin_writes_definitions_or_tenants() -> None:
    for role in acl.SERVICE_ROLES:
        assert not allowed(role, "WRITE", "topic", T.definitions)
        assert not allowed(role, "WRITE", "topic", T.tenants)


@given(tenant=tenant_ids, other=tenant_ids)
def test_a_tenant_writes_its_own_trigger_topic_and_nothing_else(tenant: str, other: str) -> None:
    grants = acl.plan("tenant", T, tenant)
    assert grants == [acl.Grant("topic", "literal", T.tenant_triggers(tenant), "WRITE")]
    if other != tenant:
        assert not any(g.covers("topic", T.tenant_triggers(other)) for g in grants)
    assert not any(g.covers("topic", name) for g in grants for name in INTERNAL)


@given(tenant=tenant_ids)
def test_no_tenant_principal_is_a_service_principal(tenant: str) -> None:
    services = {acl.service_principal(role) for role in acl.SERVICE_ROLES}
    assert acl.tenant_principal(tenant) not in services
    assert not acl.tenant_principal(tenant).startswith("User:" + acl.PRINCIPAL_PREFIX)


def test_the_tenant_role_and_only_it_names_a_tenant() -> None:
    with pytest.raises(ValueError):
        acl.plan("tenant", T)
    with pytest.raises(ValueError):
        acl.plan("router", T, "acme")


def test_plans_follow_the_topic_prefix() -> None:
    for role in acl.SERVICE_ROLES:
        assert all(g.name.startswith("t123.") for g in acl.plan(role, Topics("t123")))


def test_bindings_are_allow_bindings_for_the_principal() -> None:
    bindings = acl.bindings("executor", T, "User:switchyard.executor")
    assert len(bindings) == len(acl.plan("executor", T))
    assert {b.principal for b in bindings} == {"User:switchyard.executor"}
    assert {b.host for b in bindings} == {"*"}
    assert {b.permission_type for b in bindings} == {AclPermissionType.ALLOW}
    txn = [b for b in bindings if b.restype == ResourceType.TRANSACTIONAL_ID]
    assert [(b.name, b.resource_pattern_type, b.operation) for b in txn] == [
        ("wf.executor.", ResourcePatternType.PREFIXED, AclOperation.WRITE)
    ]


def test_tenant_acls_keep_their_signature() -> None:
    [binding] = acl.tenant_acls(T, "acme", "User:acme")
    assert (binding.name, binding.resource_pattern_type, binding.operation) == (
        "wf.tenant.acme.triggers",
        ResourcePatternType.LITERAL,
        AclOperation.WRITE,
    )


def _plan_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    from services.commands import acl as acl_cli

    monkeypatch.setattr(acl_cli, "get_settings", lambda: Settings(topic_prefix="t9"))
    return CliRunner().invoke(acl_cli.app, ["plan", *args])


def test_acl_plan_prints_every_service_role_and_the_named_tenants(monkeypatch: pytest.MonkeyPatch) -> None:
    result = _plan_cli(monkeypatch, "--tenant", "acme", "--principal", "acme=User:acme-app", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["topic_prefix"] == "t9"
    principals = {p["principal"]: p for p in doc["principals"]}
    assert set(principals) == {
        "User:switchyard.router",
        "User:switchyard.executor",
        "User:switchyard.projector",
        "User:switchyard.operator",
        "User:switchyard.console",
        "User:acme-app",
    }
    assert principals["User:acme-app"]["grants"] == [
        {"resource": "topic", "pattern": "literal", "name": "t9.tenant.acme.triggers", "operation": "WRITE"}
    ]
    assert len(principals["User:switchyard.executor"]["grants"]) == len(acl.plan("executor", Topics("t9")))


def test_acl_plan_refuses_unknown_roles_and_tenant_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _plan_cli(monkeypatch, "--role", "admin").exit_code == 2
    assert _plan_cli(monkeypatch, "--tenant", "Not.A.Tenant").exit_code == 2
    assert _plan_cli(monkeypatch, "--principal", "router=alice").exit_code == 2
    only = _plan_cli(monkeypatch, "--role", "operator")
    assert only.exit_code == 0 and "ALLOW WRITE topic t9.control" in only.output
    assert "switchyard.router" not in only.output
