"""Tenant administration: create the trigger topic, write the config to the registry, read it back."""

from __future__ import annotations

from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

from services.bus.topics import Topics, admin_client, replicated_config
from services.config import Settings
from services.registry.compacted import wait_for
from services.registry.tenants import put_tenant, tenants_table
from services.tenancy.config import TenantConfig


def create_trigger_topic(settings: Settings, config: TenantConfig) -> bool:
    """Create the tenant's trigger topic if missing; True if created."""
    admin = admin_client(settings)
    topic = Topics(settings.topic_prefix).tenant_triggers(config.tenant)
    if topic in admin.list_topics(timeout=15).topics:
        return False
    futures = admin.create_topics(
        [
            NewTopic(
                topic,
                config.trigger_partitions,
                settings.replication_factor,
                config=replicated_config(settings),
            )
        ],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)
    return True


def read_tenants(settings: Settings) -> dict[str, TenantConfig]:
    table = tenants_table(settings).start()
    try:
        table.wait_caught_up(30)
        return dict(table.items())
    finally:
        table.stop()


def save_tenant(settings: Settings, config: TenantConfig, wait_visible_s: float = 0.0) -> None:
    put_tenant(settings, config)
    if wait_visible_s > 0:
        table = tenants_table(settings).start()
        try:
            wait_for(lambda: table.get(config.tenant) == config, wait_visible_s)
        finally:
            table.stop()
