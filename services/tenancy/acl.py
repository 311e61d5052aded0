"""Least-privilege Kafka ACLs for every principal of the engine: one pure plan, applied by the Admin API.

:func:`plan` maps a role (router, executor, projector, operator, console, tenant) and the topic prefix to
the grants it needs: the topics it reads and writes, its consumer groups and its transactional
ids, nothing else. `switchyard acl plan|apply` and `tenant create` all build on it. Only ALLOW
bindings are made: with ``allow.everyone.if.no.acl.found=false`` anything not granted is refused.

Kafka implies DESCRIBE from READ and WRITE, and IDEMPOTENT_WRITE from WRITE on a topic or a
transactional id (KIP-679), so neither is granted separately. The names of groups and
transactional ids mirror the services (``services/router/service.py``,
``services/executor/service.py`` and ``cancellation.py``, ``services/projector/runner.py``,
``services/registry/compacted.py``); the secured-cluster tests run the engine under these ACLs, so
a renamed group fails there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from services.bus.topics import Topics

Role = Literal["router", "executor", "projector", "operator", "console", "tenant"]
ROLES: tuple[Role, ...] = get_args(Role)
SERVICE_ROLES: tuple[Role, ...] = ("router", "executor", "projector", "operator", "console")

Resource = Literal["topic", "group", "transactional_id"]
Pattern = Literal["literal", "prefixed"]
Operation = Literal["READ", "WRITE", "DESCRIBE_CONFIGS"]

PRINCIPAL_PREFIX = "switchyard."
"""Service principals are ``User:switchyard.<role>``: tenant ids cannot contain a dot, so no tenant
principal (``User:<tenant>``) can ever be a service's."""


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW binding without its principal: ``operation`` on ``name`` (literal or prefixed)."""

    resource: Resource
    pattern: Pattern
    name: str
    operation: Operation

    def covers(self, resource: Resource, name: str) -> bool:
        """Whether this grant's pattern matches ``name`` (the operation aside)."""
        if resource != self.resource:
            return False
        return name.startswith(self.name) if self.pattern == "prefixed" else name == self.name

    def describe(self) -> str:
        star = "*" if self.pattern == "prefixed" else ""
        return f"{self.operation} {self.resource} {self.name}{star}"


def service_principal(role: Role) -> str:
    return f"User:{PRINCIPAL_PREFIX}{role}"


def tenant_principal(tenant: str) -> str:
    return f"User:{tenant}"


def _topics(op: Operation, *names: str) -> list[Grant]:
    return [Grant("topic", "literal", name, op) for name in names]


def _groups(*names: str) -> list[Grant]:
    return [Grant("group", "literal", name, "READ") for name in names]


def plan(role: Role, topics: Topics, tenant: str | None = None) -> list[Grant]:
    """Every grant ``role`` needs on the cluster of ``topics.prefix``, sorted. ``tenant`` names the
    tenant for the ``tenant`` role (and only for it)."""
    if (role == "tenant") != (tenant is not None):
        raise ValueError("a tenant is named for the tenant role, and only for it")
    p, t = topics.prefix, topics
    registry_reader = f"{p}.registry-reader"  # assign()-only readers of the compacted registries
    grants: list[Grant]
    if role == "router":
        grants = [
            Grant("topic", "prefixed", f"{p}.tenant.", "READ"),  # every tenant's trigger topic
            *_topics("READ", t.control, t.inbox, t.router_state, t.tenants, t.definitions),
            *_topics("WRITE", t.inbox, t.commands, t.events, t.router_state, t.dlq),
            # start-up check of the compacted topics' cleanup policy
            *_topics("DESCRIBE_CONFIGS", t.router_state, t.tenants, t.definitions),
            *_groups(f"{p}.router.core", f"{p}.router.intake", f"{p}.router-restore", registry_reader),
            Grant("transactional_id", "prefixed", f"{p}.router.", "WRITE"),
        ]
    elif role == "executor":
        grants = [
            # events: the cancellation watcher tails them to stop attempts of cancelled runs
            *_topics("READ", t.commands, t.tenants, t.events),
            *_topics("WRITE", t.inbox, t.dlq),  # step results go to the inbox
            *_groups(f"{p}.executor", registry_reader),
            Grant("group", "prefixed", f"{p}.executor-cancellation.", "READ"),  # one per instance
            Grant("transactional_id", "prefixed", f"{p}.executor.", "WRITE"),
        ]
    elif role == "projector":
        grants = [
            *_topics("READ", t.events, t.dlq, t.tenants),
            *_groups(f"{p}.projector", f"{p}.projector.dead-letters", registry_reader),
        ]
    elif role == "operator":
        # replay/cancel write commands; every outcome they report is read from PostgreSQL
        grants = _topics("WRITE", t.control)
    elif role == "console":
        # It acts only by producing: signed control commands, and webhook triggers for whichever
        # tenant's token a request carries (it checks the token; Kafka cannot). It shows
        # definitions from the registry (assign()-only); everything else comes from PostgreSQL.
        grants = [
            *_topics("WRITE", t.control),
            Grant("topic", "prefixed", f"{p}.tenant.", "WRITE"),
            *_topics("READ", t.definitions),
            *_groups(registry_reader),
        ]
    else:
        assert tenant is not None
        grants = _topics("WRITE", t.tenant_triggers(tenant))
    return sorted(set(grants))


_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
}
_PATTERN = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
_OPERATION = {
    "READ": AclOperation.READ,
    "WRITE": AclOperation.WRITE,
    "DESCRIBE_CONFIGS": AclOperation.DESCRIBE_CONFIGS,
}


def binding(grant: Grant, principal: str) -> AclBinding:
    return AclBinding(
        _RESOURCE[grant.resource],
        grant.name,
        _PATTERN[grant.pattern],
        principal,
        "*",
        _OPERATION[grant.operation],
        AclPermissionType.ALLOW,
    )


def bindings(role: Role, topics: Topics, principal: str, tenant: str | None = None) -> list[AclBinding]:
    """The ACL bindings of :func:`plan` for ``principal``."""
    return [binding(grant, principal) for grant in plan(role, topics, tenant)]


def _security_disabled(exc: KafkaException) -> bool:
    return "SECURITY_DISABLED" in str(exc) or "No Authorizer" in str(exc)


def apply(admin: AdminClient, acls: list[AclBinding]) -> bool:
    """Create ``acls`` (creating an existing binding is a no-op). Returns False, creating nothing,
    when the cluster has no authorizer."""
    if not acls:
        return True
    try:
        for future in admin.create_acls(acls, request_timeout=15).values():
            future.result(timeout=30)
    except KafkaException as exc:
        if _security_disabled(exc):
            return False
        raise
    return True


def tenant_acls(topics: Topics, tenant: str, principal: str) -> list[AclBinding]:
    """WRITE on the tenant's own trigger topic (literal), nothing else."""
    return bindings("tenant", topics, principal, tenant)


def ensure_tenant_acls(admin: AdminClient, topics: Topics, tenant: str, principal: str) -> list[str]:
    """Create the tenant's ACLs if the cluster enforces ACLs; returns a description of what was done."""
    if not apply(admin, tenant_acls(topics, tenant, principal)):
        return []
    return [f"{principal} may WRITE (and DESCRIBE) {topics.tenant_triggers(tenant)} only"]
