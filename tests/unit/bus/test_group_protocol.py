"""The consumer group protocol choice and the consumer configuration each protocol gets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.bus.clients import consumer_config
from services.bus.group_protocol import (
    CLASSIC_SESSION_TIMEOUT_MS,
    HEARTBEAT_INTERVAL,
    PROTOCOLS,
    SESSION_TIMEOUT,
    choose,
    group_protocol,
)
from services.config import Settings
from services.devinfra.kafka_local import CONSUMER_GROUP_PROPERTIES

TUNED = {SESSION_TIMEOUT: "2000", HEARTBEAT_INTERVAL: "500", PROTOCOLS: "classic,consumer,streams"}
KAFKA_DEFAULTS = {SESSION_TIMEOUT: "45000", HEARTBEAT_INTERVAL: "5000", PROTOCOLS: "classic,consumer,streams"}


def test_auto_takes_kip848_only_from_a_broker_tuned_for_it() -> None:
    assert choose("auto", TUNED) == "consumer"
    assert choose("auto", KAFKA_DEFAULTS) == "classic"  # 45 s sessions would slow recovery
    assert choose("auto", {**TUNED, HEARTBEAT_INTERVAL: "5000"}) == "classic"  # slow assignments
    assert choose("auto", {**TUNED, PROTOCOLS: "classic"}) == "classic"  # protocol not offered
    assert choose("auto", {PROTOCOLS: "classic,consumer"}) == "classic"  # settings unreadable
    assert choose("auto", None) == "classic"  # broker could not be asked


def test_an_explicit_protocol_is_kept_whatever_the_broker_says() -> None:
    assert choose("consumer", KAFKA_DEFAULTS) == "consumer"
    assert choose("classic", TUNED) == "classic"


@given(session_ms=st.integers(1, 10**7), heartbeat_ms=st.integers(1, 10**6))
def test_auto_never_makes_recovery_slower_than_classic(session_ms: int, heartbeat_ms: int) -> None:
    broker = {SESSION_TIMEOUT: str(session_ms), HEARTBEAT_INTERVAL: str(heartbeat_ms), PROTOCOLS: "consumer"}
    if choose("auto", broker) == "consumer":
        assert session_ms <= CLASSIC_SESSION_TIMEOUT_MS


def test_the_dev_brokers_are_tuned_for_kip848() -> None:
    lines = dict(line.split("=", 1) for line in CONSUMER_GROUP_PROPERTIES.splitlines())
    assert choose("auto", {**lines, PROTOCOLS: "classic,consumer"}) == "consumer"
    assert int(lines["group.consumer.min.session.timeout.ms"]) <= int(lines[SESSION_TIMEOUT])
    assert int(lines["group.consumer.min.heartbeat.interval.ms"]) <= int(lines[HEARTBEAT_INTERVAL])


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_consumer_config_per_protocol(protocol: str) -> None:
    settings = Settings(kafka_bootstrap_servers="unused:9092", group_protocol=protocol)
    assert group_protocol(settings) == protocol  # explicit: no broker is asked
    conf = consumer_config(settings, "g", **{"fetch.wait.max.ms": 100})
    assert conf["group.id"] == "g" and conf["fetch.wait.max.ms"] == 100
    assert conf["isolation.level"] == "read_committed" and conf["enable.auto.commit"] is False
    classic_only = {"partition.assignment.strategy", "session.timeout.ms", "heartbeat.interval.ms"}
    if protocol == "consumer":
        # librdkafka refuses to create a KIP-848 consumer with any of the classic settings
        assert conf["group.protocol"] == "consumer" and not classic_only & conf.keys()
    else:
        assert "group.protocol" not in conf and classic_only <= conf.keys()
        assert conf["partition.assignment.strategy"] == "cooperative-sticky"
