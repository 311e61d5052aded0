"""`switchyard dlq` on a real broker, database and running engine: a trigger dead-lettered for an
unknown tenant is re-driven once the tenant exists and its run succeeds; a dry run sends nothing;
a kind that can never succeed is refused; a second re-drive needs --again (and starts no second
run); every re-drive leaves an audit row and a traceable header on the record it sent."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from typer.testing import CliRunner, Result

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.cli import app
from services.config import Settings, get_settings
from services.dlq.eligibility import REDRIVE_ID_HEADER, REDRIVEN_FROM_HEADER
from services.projector.db import upgrade_database
from services.router.records import run_id_for
from services.tenancy.admin import create_trigger_topic
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry, Keyring, generate_keypair
from tests.fixtures.database import create_database, drop_database
from tests.fixtures.engine import Engine, EventLog, make_settings, register_tenant

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WORKFLOW = """
name: onboard
version: 1
trigger: {event: go}
steps:
  - {id: only, action: echo, inputs: {n: "${{ trigger.data.n }}"}}
"""
GHOST = "ghost"  # trigger topic made before the router starts, tenant registered by the test
MESS = "mess"  # registered from the start: receives garbage


@dataclass
class World:
    settings: Settings
    database_url: str
    eng: Engine
    public_key: str
    producer: Producer

    @property
    def topics(self) -> Topics:
        return Topics(self.settings.topic_prefix)

    def sql(self, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(query, args).fetchall()

    def wait_sql(self, query: str, *args: Any, timeout_s: float = 90) -> list[tuple[Any, ...]]:
        """The rows of ``query`` once there are any."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = self.sql(query, *args)
            if rows:
                return rows
            time.sleep(0.2)
        raise AssertionError(f"no rows for {query} {args} within {timeout_s}s")

    def send(self, tenant: str, value: bytes, key: bytes) -> None:
        self.producer.produce(self.topics.tenant_triggers(tenant), key=key, value=value)
        assert self.producer.flush(30) == 0

    def ends(self, tenant: str) -> list[int]:
        """High watermarks of the tenant's trigger partitions."""
        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap_servers, "group.id": "peek"})
        try:
            topic = self.topics.tenant_triggers(tenant)
            return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in (0, 1)]
        finally:
            consumer.close()


def trigger(n: int, key: str) -> bytes:
    return json.dumps({"event_type": "go", "data": {"n": n}, "idempotency_key": key}).encode()


@pytest.fixture(scope="module")
def world(kafka_bootstrap: str, database_admin_url: str) -> Iterator[World]:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    unique = uuid.uuid4().hex[:10]
    dbname = f"sy_dlq_{unique}"
    database_url = create_database(database_admin_url, dbname)
    settings = make_settings(kafka_bootstrap, f"d{unique}", database_url=database_url)
    ensure_topics(admin_client(settings), internal_specs(settings))
    private, public = generate_keypair()
    register_tenant(settings, MESS, public)
    # The ghost's topic exists before the router subscribes (no wait for its regex to see it),
    # but the tenant is not registered: its triggers are dead-lettered unknown_tenant.
    keyring = Keyring(tenant=GHOST, keys=[KeyEntry(key_id="k1", public_key=public)])
    create_trigger_topic(settings, TenantConfig(tenant=GHOST, trigger_partitions=2, keyring=keyring))
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"events-{unique}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([Topics(settings.topic_prefix).events])
    eng = Engine(settings, MESS, private, threading.Event(), EventLog(consumer))
    producer = Producer(plain_producer_config(settings))
    try:
        upgrade_database(database_url)
        for name, fn, kwargs in (
            ("router", run_router, {"instance_id": "r1"}),
            ("executor", run_executor, {"instance_id": "e1"}),
            ("projector", run_projector, {}),
        ):
            assert eng.start(name, fn, **kwargs).wait(60), name
        yield World(settings, database_url, eng, public, producer)
    finally:
        eng.stop.set()
        for thread in eng.threads:
            thread.join(30)
        consumer.close()
        producer.flush(10)
        drop_database(database_admin_url, dbname)


@pytest.fixture
def cli(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    for name in (
        "SWITCHYARD_DATABASE_URL",
        "SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS",
        "SWITCHYARD_OPERATOR_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", world.database_url)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", str(world.settings.kafka_bootstrap_servers))
    monkeypatch.setenv("SWITCHYARD_TOPIC_PREFIX", world.settings.topic_prefix)
    monkeypatch.setenv("COLUMNS", "250")
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, ["dlq", *args])

    yield run
    get_settings.cache_clear()


def outcomes(result: Result) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(result.stdout)["outcomes"]
    return found


def test_an_unknown_tenants_trigger_is_redriven_once_the_tenant_exists(
    world: World, cli: Callable[..., Result]
) -> None:
    topic = world.topics.tenant_triggers(GHOST)
    original = trigger(1, "order-1")
    world.send(GHOST, original, b"order-1")
    # Larger than the 64 KiB the projector stores of an original: re-driven from the topic's copy.
    big = json.dumps({"event_type": "go", "data": {"n": 3, "pad": "p" * 100_000}, "idempotency_key": "big"})
    world.send(GHOST, big.encode(), b"big")
    ghosts = "from dead_letters where original_topic = %s and error_kind = 'unknown_tenant'"
    world.wait_sql(f"select count(*) {ghosts} having count(*) = 2", topic)
    found = world.sql(f"select dlq_id, original_key {ghosts}", topic)
    ids = {bytes(key).decode(): dlq for dlq, key in found}
    dlq_id, big_id = ids["order-1"], ids["big"]

    listed = cli("list", "--tenant", GHOST, "--json")
    assert listed.exit_code == 0, listed.output
    assert {(d["dlq_id"], d["redrives"]) for d in json.loads(listed.stdout)} == {(dlq_id, 0), (big_id, 0)}
    assert json.loads(cli("list", "--tenant", GHOST, "--redriven", "--json").stdout) == []

    # A dry run reports what it would send, and sends nothing.
    before = world.ends(GHOST)
    dry = cli("redrive", dlq_id, "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert [(o["status"], o["topic"], o["key"]) for o in outcomes(dry)] == [("would_send", topic, "order-1")]
    assert world.ends(GHOST) == before
    assert world.sql("select count(*) from dead_letter_redrives") == [(0,)]

    # The tenant is onboarded; a probe run proves the router knows it and its workflow.
    register_tenant(world.settings, GHOST, world.public_key)
    world.eng.publish(WORKFLOW, tenant=GHOST)
    world.send(GHOST, trigger(0, "probe"), b"probe")
    probe = run_id_for(GHOST, "onboard", "probe")
    world.wait_sql("select 1 from runs where run_id = %s and state = 'succeeded'", probe)

    sent = cli("redrive", dlq_id, "--requester", "alice@ops", "--reason", "tenant onboarded", "--json")
    assert sent.exit_code == 0, sent.output
    [outcome] = outcomes(sent)
    assert outcome["status"] == "redriven" and outcome["topic"] == topic
    run_id = run_id_for(GHOST, "onboard", "order-1")
    world.wait_sql("select 1 from runs where run_id = %s and state = 'succeeded'", run_id)

    # The audit row, and the header that ties the new record to it.
    [audit] = world.sql(
        "select redrive_id, requester, reason, target_topic, target_partition, target_offset, tenant "
        "from dead_letter_redrives where dlq_id = %s",
        dlq_id,
    )
    assert audit == (
        outcome["redrive_id"],
        "alice@ops",
        "tenant onboarded",
        topic,
        outcome["partition"],
        outcome["offset"],
        GHOST,
    )
    record = read_one(world, topic, outcome["partition"], outcome["offset"])
    assert (record.key(), record.value()) == (b"order-1", original)
    headers = dict(record.headers() or [])
    assert headers[REDRIVE_ID_HEADER] == outcome["redrive_id"].encode()
    assert headers[REDRIVEN_FROM_HEADER] == dlq_id.encode()

    # A second re-drive is refused, saying when and by whom; --again sends it, and the run it
    # maps to is not started twice.
    twice = cli("redrive", dlq_id, "--requester", "bob@ops", "--json")
    assert twice.exit_code == 1, twice.output
    [refused] = outcomes(twice)
    assert refused["status"] == "refused" and refused["code"] == "already_redriven"
    assert "alice@ops" in refused["reason"] and "--again" in refused["reason"]
    shown = json.loads(cli("show", dlq_id, "--json").stdout)
    assert [r["requester"] for r in shown["redrives"]] == ["alice@ops"]
    assert (shown["redrivable"], shown["redrivable_with_again"]) == (False, True)
    assert shown["original_value"] == {
        "format": "json",
        "value": {"event_type": "go", "data": {"n": 1}, "idempotency_key": "order-1"},
        "truncated": False,
    }
    again = cli("redrive", dlq_id, "--requester", "bob@ops", "--again", "--reason", "once more")
    assert again.exit_code == 0, again.output
    assert "redriven" in again.stdout
    # Same Kafka key, so the same partition, after the re-driven record: once its run succeeded,
    # intake has taken the re-drive too.
    world.send(GHOST, trigger(2, "marker"), b"order-1")
    world.wait_sql(
        "select 1 from runs where run_id = %s and state = 'succeeded'", run_id_for(GHOST, "onboard", "marker")
    )
    assert world.sql(
        "select count(*) from run_events where run_id = %s and type = 'run_pending'", run_id
    ) == [(1,)]
    assert world.sql(
        "select requester from dead_letter_redrives where dlq_id = %s order by redriven_at", dlq_id
    ) == [
        ("alice@ops",),
        ("bob@ops",),
    ]
    assert json.loads(cli("list", "--tenant", GHOST, "--redriven", "--json").stdout)[0]["redrives"] == 2

    # The rest in bulk: only the big one was never re-driven; its whole copy is read back.
    bulk = cli("redrive", "--tenant", GHOST, "--not-redriven", "--yes", "--requester", "dave@ops", "--json")
    assert bulk.exit_code == 0, bulk.output
    assert [(o["dlq_id"], o["status"], o["value_size"]) for o in outcomes(bulk)] == [
        (big_id, "redriven", len(big))
    ]
    big_run = run_id_for(GHOST, "onboard", "big")
    world.wait_sql("select 1 from runs where run_id = %s and state = 'succeeded'", big_run)


def read_one(world: World, topic: str, partition: int, offset: int) -> Any:
    consumer = Consumer(
        {
            "bootstrap.servers": world.settings.kafka_bootstrap_servers,
            "group.id": f"peek-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                return msg
        raise AssertionError(f"no record at {topic}[{partition}]@{offset}")
    finally:
        consumer.close()


def test_a_kind_that_can_never_succeed_is_refused_and_a_bulk_redrive_needs_yes(
    world: World, cli: Callable[..., Result]
) -> None:
    world.send(MESS, b'{"event_type": "go", "data": nope', b"garbage-1")
    [(dlq_id,)] = world.wait_sql(
        "select dlq_id from dead_letters where tenant = %s and error_kind = 'invalid_json'", MESS
    )
    table = cli("list", "--tenant", MESS, "--error-kind", "invalid_json")
    assert table.exit_code == 0 and dlq_id in table.stdout and "invalid_json" in table.stdout

    nobody = cli("redrive", dlq_id)
    assert nobody.exit_code == 2 and "--requester" in nobody.output

    one = cli("redrive", dlq_id, "--requester", "carol@ops", "--json")
    assert one.exit_code == 1, one.output
    [refused] = outcomes(one)
    assert refused["code"] == "never_succeeds" and "invalid_json" in refused["reason"]

    unconfirmed = cli("redrive", "--tenant", MESS, "--requester", "carol@ops")
    assert unconfirmed.exit_code == 2 and "--yes" in unconfirmed.output
    bulk = cli("redrive", "--tenant", MESS, "--requester", "carol@ops", "--yes", "--json")
    assert bulk.exit_code == 1, bulk.output
    assert {(o["dlq_id"], o["code"]) for o in outcomes(bulk)} == {(dlq_id, "never_succeeds")}
    assert world.sql("select count(*) from dead_letter_redrives where tenant = %s", MESS) == [(0,)]
    assert "no dead letters match" in cli("redrive", "--tenant", "nobody-here", "--dry-run").output
