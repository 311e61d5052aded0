"""Kafka ACLs for a tenant: its principal may write (and describe) only its own trigger topics.

Created only where the cluster has an authorizer; on a cluster without one (the local
launcher's), the broker answers SECURITY_DISABLED and nothing is created.
"""

from __future__ import annotations

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


def _security_disabled(exc: KafkaException) -> bool:
    return "SECURITY_DISABLED" in str(exc) or "No Authorizer" in str(exc)


def tenant_acls(topics: Topics, tenant: str, principal: str) -> list[AclBinding]:
    """Prefixed ACLs on ``<prefix>.tenant.<tenant>.`` — WRITE and DESCRIBE, nothing else."""
    prefix = topics.tenant_triggers(tenant).removesuffix("triggers")
    return [
        AclBinding(
            ResourceType.TOPIC,
            prefix,
            ResourcePatternType.PREFIXED,
            principal,
            "*",
            op,
            AclPermissionType.ALLOW,
        )
        for op in (AclOperation.WRITE, AclOperation.DESCRIBE)
    ]


def ensure_tenant_acls(admin: AdminClient, topics: Topics, tenant: str, principal: str) -> list[str]:
    """Create the tenant's ACLs if the cluster enforces ACLs; returns a description of what was done."""
    bindings = tenant_acls(topics, tenant, principal)
    try:
        for future in admin.create_acls(bindings, request_timeout=15).values():
            future.result(timeout=30)
    except KafkaException as exc:
        if _security_disabled(exc):
            return []
        raise
    return [f"{principal} may WRITE and DESCRIBE topics prefixed {bindings[0].name}"]
