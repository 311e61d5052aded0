"""The tenants registry: `TenantRecord`s on the compacted tenants topic, keyed by tenant id."""

from __future__ import annotations

import json
import time

from confluent_kafka import Producer

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import records, serde
from services.contracts.records import TenantRecord
from services.registry.compacted import CompactedTable
from services.tenancy.config import TenantConfig


def decode_tenant(key: str, value: bytes) -> TenantConfig:
    record = records.decode_tenant_record(value)
    config = TenantConfig.model_validate_json(record["config_json"])
    if config.tenant != key:
        raise ValueError(f"record key {key!r} does not match tenant {config.tenant!r}")
    return config


def tenants_table(settings: Settings) -> CompactedTable[TenantConfig]:
    return CompactedTable(settings, Topics(settings.topic_prefix).tenants, decode_tenant)


def put_tenant(settings: Settings, config: TenantConfig) -> None:
    record: TenantRecord = {
        "tenant": config.tenant,
        "config_json": json.dumps(config.model_dump(mode="json")),
        "updated_at": int(time.time() * 1000),
    }
    producer = Producer(plain_producer_config(settings))
    producer.produce(
        Topics(settings.topic_prefix).tenants, key=config.tenant, value=serde.encode("TenantRecord", record)
    )
    if producer.flush(30) != 0:
        raise RuntimeError("could not write the tenant record to Kafka within 30 s")
