"""Least-privilege ACLs enforced by a real secured broker: who may write and read which topic."""

from __future__ import annotations

import re
import stat
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from services.bus.clients import plain_producer_config
from services.devinfra.kafka_secure import ADMIN, service_user
from services.tenancy import acl
from tests.secure.conftest import Secured

pytestmark = pytest.mark.integration

DENIED = "TOPIC_AUTHORIZATION_FAILED"


def produce(config: dict[str, Any], topic: str) -> str:
    """'ok' when the record was delivered, else the name of the error Kafka answered with."""
    reports: list[KafkaError | None] = []
    producer = Producer({**config, "message.timeout.ms": 15_000})
    # The callback only keeps the error: naming it there runs while a fatal refusal may already be
    # pending in the client, and confluent-kafka then raises SystemError out of flush().
    producer.produce(
        topic,
        key=b"k",
        value=b'{"event_type": "probe", "data": {}}',
        on_delivery=lambda err, _msg: reports.append(err),
    )
    try:
        producer.flush(30)
    except (KafkaException, SystemError) as exc:  # a fatal refusal: e.g. no WRITE anywhere, so no producer id
        return refusal_name(exc)
    assert reports, f"no delivery report for {topic}"
    return "ok" if reports[0] is None else error_name(reports[0])


def refusal_name(exc: BaseException) -> str:
    """The Kafka error code a failed flush() stands for (a SystemError carries it as its cause)."""
    if isinstance(exc, SystemError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return error_name(exc.args[0])
    named = re.search(r"code=(\w+)", str(exc))
    if named is None:
        raise AssertionError(f"flush failed with something that is not a Kafka refusal: {exc!r}") from exc
    return named.group(1)


def error_name(err: KafkaError) -> str:
    try:
        return str(err.name())
    except SystemError:  # seen under parallel workers: the client failing to name a fatal error
        named = re.search(r"code=(\w+)", str(err))
        return named.group(1) if named else str(err)


def read(config: dict[str, Any], topic: str, subscribe: bool = False, timeout_s: float = 20) -> str:
    """'read' when a record came back, else the name of the first error (fails if neither comes).

    An assign()ed consumer reads without its group, so the group's refusal is passed over there:
    the answer is the topic's."""
    consumer = Consumer(
        {
            **config,
            "group.id": f"probe-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        described = consumer.list_topics(topic, timeout=15).topics[topic].error
        if described is not None and not subscribe:
            return str(described.name())  # not even allowed to know the topic's partitions
        if subscribe:
            consumer.subscribe([topic])
        else:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in (0, 1)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            error = msg.error()
            if error is None:
                return "read"
            if subscribe or error.name() != "GROUP_AUTHORIZATION_FAILED":
                return str(error.name())
        raise AssertionError(f"neither a record nor an error from {topic} within {timeout_s}s")
    finally:
        consumer.close()


def as_user(env: Secured, username: str) -> dict[str, Any]:
    return plain_producer_config(env.settings(username)) | {"log_level": 0}


def internal(env: Secured) -> dict[str, str]:
    t = env.topics
    return {
        "control": t.control,
        "commands": t.commands,
        "results": t.inbox,
        "events": t.events,
        "router.state": t.router_state,
        "dlq": t.dlq,
        "definitions": t.definitions,
        "tenants": t.tenants,
    }


def test_a_tenant_writes_its_own_trigger_topic_and_nothing_else(secured: Secured) -> None:
    acme = as_user(secured, "acme")
    own = secured.topics.tenant_triggers("acme")
    assert produce(acme, own) == "ok"
    refused = {name: produce(acme, topic) for name, topic in internal(secured).items()}
    refused["globex triggers"] = produce(acme, secured.topics.tenant_triggers("globex"))
    assert refused == dict.fromkeys(refused, DENIED)


def test_a_tenant_reads_nothing_not_even_its_own_topic(secured: Secured) -> None:
    own = secured.topics.tenant_triggers("acme")
    assert produce(as_user(secured, "acme"), own) == "ok"
    assert read(secured.client(ADMIN), own) == "read"  # the record is there to be read
    acme = secured.client("acme")
    assert read(acme, own) == DENIED
    assert read(acme, own, subscribe=True) == "GROUP_AUTHORIZATION_FAILED"
    for topic in (secured.topics.events, secured.topics.tenant_triggers("globex"), secured.topics.tenants):
        assert read(acme, topic) == DENIED


def test_a_tenant_cannot_even_list_other_topics(secured: Secured) -> None:
    listed = AdminClient(secured.client("acme")).list_topics(timeout=15).topics
    ours = {name for name in listed if name.startswith(secured.prefix + ".")}
    assert ours == {secured.topics.tenant_triggers("acme")}


def test_the_executor_cannot_write_definitions_tenants_or_run_history(secured: Secured) -> None:
    executor = as_user(secured, service_user("executor"))
    topics = internal(secured)
    assert produce(executor, topics["results"]) == "ok"
    for name in ("definitions", "tenants", "events", "commands", "control", "router.state"):
        assert produce(executor, topics[name]) == DENIED, name
    assert produce(executor, secured.topics.tenant_triggers("acme")) == DENIED


def test_the_operator_writes_control_and_nothing_internal(secured: Secured) -> None:
    operator = as_user(secured, service_user("operator"))
    topics = internal(secured)
    assert produce(operator, topics.pop("control")) == "ok"
    refused = {name: produce(operator, topic) for name, topic in topics.items()}
    refused["acme triggers"] = produce(operator, secured.topics.tenant_triggers("acme"))
    assert refused == dict.fromkeys(refused, DENIED)
    assert read(secured.client(service_user("operator")), secured.topics.control) == DENIED


def test_the_console_writes_control_and_triggers_and_reads_only_definitions(secured: Secured) -> None:
    console = as_user(secured, service_user("console"))
    topics = internal(secured)
    assert produce(console, topics.pop("control")) == "ok"
    assert produce(console, secured.topics.tenant_triggers("acme")) == "ok"
    refused = {name: produce(console, topic) for name, topic in topics.items()}
    assert refused == dict.fromkeys(refused, DENIED)
    reader = secured.client(service_user("console"))
    assert read(reader, secured.topics.events) == DENIED
    assert read(reader, secured.topics.tenant_triggers("acme")) == DENIED


def test_the_router_cannot_write_the_registries(secured: Secured) -> None:
    router = as_user(secured, service_user("router"))
    for topic in (secured.topics.definitions, secured.topics.tenants):
        assert produce(router, topic) == DENIED, topic


def test_the_projector_cannot_produce_at_all(secured: Secured) -> None:
    # It may write no topic and no transactional id: Kafka refuses the topic, or an idempotent
    # producer id at all, whichever the producer asks for first.
    projector = as_user(secured, service_user("projector"))
    for topic in (secured.topics.definitions, secured.topics.events, secured.topics.control):
        assert produce(projector, topic) in {DENIED, "CLUSTER_AUTHORIZATION_FAILED"}, topic


def test_only_the_right_password_gets_in(secured: Secured) -> None:
    wrong = {**secured.client("acme"), "sasl.password": "not-the-password"}
    with pytest.raises(KafkaException):
        AdminClient(wrong).list_topics(timeout=3)
    unauthenticated: dict[str, str | int | float | bool] = {
        "bootstrap.servers": secured.kafka.bootstrap,
        "log_level": 0,
    }
    with pytest.raises(KafkaException):
        AdminClient(unauthenticated).list_topics(timeout=3)


def test_no_principal_but_the_admin_can_grant_itself_more(secured: Secured) -> None:
    grab = acl.bindings("router", secured.topics, "User:acme")  # a tenant taking the router's rights
    for username in ("acme", service_user("operator"), service_user("router")):
        admin = AdminClient(secured.client(username))
        with pytest.raises(KafkaException, match="CLUSTER_AUTHORIZATION_FAILED"):
            acl.apply(admin, grab)
        topic = NewTopic(f"{secured.prefix}.tenant.{username.replace('.', '-')}x.triggers", 1, 1)
        with pytest.raises(KafkaException, match="AUTHORIZATION_FAILED"):
            for future in admin.create_topics([topic]).values():
                future.result(timeout=30)


def test_the_secured_broker_keeps_its_passwords_out_of_its_log(secured: Secured) -> None:
    log = secured.kafka.log_file.read_text(errors="replace")
    leaked = [user for user, password in secured.kafka.credentials().items() if password in log]
    assert leaked == []
    assert stat.S_IMODE(secured.kafka.home.stat().st_mode) == 0o700
    assert stat.S_IMODE(secured.kafka.credentials_file.stat().st_mode) == 0o600
