"""A secured broker (SASL/SCRAM-SHA-512, standard authorizer, no ACL = no access) for these tests.

Started once per session on free ports with its own state directory, beside whatever broker the
other tests use, and stopped at the end. ``secured`` gives each test module a fresh topic prefix
with the internal topics, two tenants and the ACLs of ``switchyard acl apply`` for every role.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.devinfra import kafka_secure
from services.devinfra.kafka_local import LauncherError
from services.devinfra.kafka_secure import ADMIN, SecureKafka, client_options, service_user
from services.tenancy import acl
from services.tenancy.admin import create_trigger_topic, save_tenant
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry, Keyring, generate_keypair

TENANTS = ("acme", "globex")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """The secured broker, with SCRAM principals for every service role and for ``TENANTS``."""
    home: Path = tmp_path_factory.mktemp("kafka-secure")
    kafka = SecureKafka(_free_port(), _free_port(), home)
    try:
        kafka_secure.start(kafka, TENANTS, progress=lambda msg: None)
    except LauncherError as exc:
        kafka.stop()
        pytest.fail(f"no secured Kafka for these tests: {exc}", pytrace=False)
    yield kafka
    kafka.stop()


@dataclass(frozen=True)
class Secured:
    """One topic prefix on the secured broker; ``settings(user)`` are a client's as ``user``."""

    kafka: SecureKafka
    prefix: str
    public_key: str
    private_key: str

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def settings(self, username: str, **overrides: Any) -> Settings:
        return Settings(
            kafka_bootstrap_servers=self.kafka.bootstrap,
            kafka_options=client_options(username),
            kafka_sasl_password=self.kafka.password(username),
            topic_prefix=self.prefix,
            internal_partitions=4,
            commit_interval_ms=20,
            **overrides,
        )

    def role(self, role: acl.Role, **overrides: Any) -> Settings:
        return self.settings(service_user(role), **overrides)

    @property
    def admin(self) -> Settings:
        return self.settings(ADMIN)

    def client(self, username: str, **extra: Any) -> dict[str, Any]:
        """A raw librdkafka configuration as ``username`` (short timeouts: refusals are the point)."""
        return {**self.kafka.client_config(username), "log_level": 0, **extra}


@pytest.fixture(scope="module")
def secured(secure_broker: SecureKafka) -> Secured:
    """A fresh prefix: internal topics, tenants ``acme`` and ``globex`` registered, every ACL applied."""
    private, public = generate_keypair()
    env = Secured(secure_broker, f"s{uuid.uuid4().hex[:10]}", public, private)
    admin = env.admin
    ensure_topics(admin_client(admin), internal_specs(admin))
    bindings = [
        b for role in acl.SERVICE_ROLES for b in acl.bindings(role, env.topics, acl.service_principal(role))
    ]
    for tenant in TENANTS:
        config = TenantConfig(
            tenant=tenant,
            trigger_partitions=2,
            keyring=Keyring(tenant=tenant, keys=[KeyEntry(key_id="k1", public_key=public)]),
            operators=[f"ops@{tenant}"],
        )
        create_trigger_topic(admin, config)
        save_tenant(admin, config)
        bindings += acl.tenant_acls(env.topics, tenant, acl.tenant_principal(tenant))
    assert acl.apply(admin_client(admin), bindings), "the secured broker has no authorizer"
    _wait_for_acls(admin, env.prefix, len(bindings))
    return env


def _wait_for_acls(admin: Settings, prefix: str, expected: int, timeout_s: float = 30) -> None:
    """ACLs reach the authorizer through the metadata log: wait until the broker lists them all."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    # None matches any name, principal and host (the stubs only know str)
    every = AclBindingFilter(
        ResourceType.ANY,
        None,  # type: ignore[arg-type]
        ResourcePatternType.ANY,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    client = admin_client(admin)
    deadline = time.monotonic() + timeout_s
    while True:
        listed = client.describe_acls(every, request_timeout=10).result(timeout=15)
        ours = [b for b in listed if b.name.startswith(prefix + ".")]
        if len(ours) >= expected:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(ours)}/{expected} ACLs listed after {timeout_s}s")
        time.sleep(0.1)
