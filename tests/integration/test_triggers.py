"""The schedule trigger on a real broker: one TriggerEvent per tick on the tenant's topic, across restarts.

A fake clock drives the ticks (a minute per tick, in a few real seconds); the emissions are real
records on a real topic, read back with a read_committed consumer. Waits use deadlines.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer, KafkaError, Message
from confluent_kafka.admin import AdminClient

from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.triggers import TriggerRegistry
from services.triggers.emitter import KafkaEmitter
from services.triggers.runner import prepare, run_triggers
from services.triggers.schedule import ScheduleTrigger, tick_key
from tests.fixtures.kafka import create_topics, key_of
from tests.unit.triggers.helpers import FakeClock

pytestmark = pytest.mark.integration


def read_all(make_consumer: Callable[..., Consumer], topic: str, partitions: int) -> list[Message]:
    """Every committed record of ``topic``, to each partition's end."""
    consumer = make_consumer([topic], **{"enable.partition.eof": True})
    at_end: set[int] = set()
    seen: list[Message] = []
    deadline = time.monotonic() + 60
    while len(at_end) < partitions:
        assert time.monotonic() < deadline, f"no end of {topic} within 60 s"
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        error, partition = msg.error(), msg.partition()
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            at_end.add(partition or 0)
        elif error is not None:
            raise AssertionError(f"consumer error: {error}")
        else:
            at_end.discard(partition or 0)
            seen.append(msg)
    return seen


def wait_for_leaders(bootstrap: str, topic: str, partitions: int) -> None:
    """A just-created topic answers NOT_LEADER for a moment: wait until every partition has one."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic, timeout=10).topics.get(topic)
        if (
            meta is not None
            and meta.error is None
            and len(meta.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in meta.partitions.values())
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"{topic} has no leader for every partition within 30 s")


class ScanSignalling(KafkaEmitter):
    """A KafkaEmitter that tells when its read-back at start has finished."""

    def __init__(self, settings: Settings, instance: str, tenant: str) -> None:
        super().__init__(settings, instance, tenant)
        self.scanned = threading.Event()

    def recent_keys(self, prefix: str, since: datetime) -> set[str]:
        keys = super().recent_keys(prefix, since)  # a failure is retried by the schedule
        self.scanned.set()
        return keys


class Schedule:
    """``run_triggers`` with one schedule instance in a thread, on a fake clock."""

    def __init__(self, settings: Settings, clock: FakeClock) -> None:
        trigger = ScheduleTrigger(clock=clock, poll_s=0.01)
        registry = TriggerRegistry.load(builtins=False, entry_points=False, extra=[trigger])
        self.prepared = prepare(
            [
                {
                    "name": "minutely",
                    "type": "schedule",
                    "tenant": "acme",
                    "config": {"event_type": "report.tick", "cron": "* * * * *", "data": {"report": "m"}},
                }
            ],
            registry,
        )
        self.stop = threading.Event()
        emitter = ScanSignalling(settings, "minutely", "acme")
        self.thread = threading.Thread(
            target=run_triggers,
            args=(settings, self.prepared, self.stop),
            kwargs={"emitter_factory": lambda settings, instance: emitter},
        )
        self.thread.start()
        # The schedule reads its start time, then the topic back: only once it has may the test
        # move the clock, or a tick could pass before the schedule knows where it starts.
        assert emitter.scanned.wait(30), "the schedule did not read its topic back within 30 s"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def test_schedule_emits_exactly_one_trigger_per_tick_across_restarts(
    kafka_bootstrap: str, unique: str, make_consumer: Callable[..., Consumer]
) -> None:
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=f"t{unique}")
    topic = Topics(settings.topic_prefix).tenant_triggers("acme")
    create_topics(kafka_bootstrap, [topic], partitions=3)
    wait_for_leaders(kafka_bootstrap, topic, 3)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    clock = FakeClock(now + timedelta(seconds=30))
    tick = [now + timedelta(minutes=n) for n in range(8)]
    live = make_consumer([topic])
    seen: list[str] = []

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 30
        while len(seen) < count:
            assert time.monotonic() < deadline, f"expected {count} triggers, saw {seen}"
            msg = live.poll(0.1)
            if msg is not None and not msg.error():
                seen.append(key_of(msg).decode())

    first = Schedule(settings, clock)
    clock.advance(30)  # tick 1
    wait_for(1)
    clock.advance(60)  # tick 2
    wait_for(2)
    first.close()

    clock.advance(130)  # down through ticks 3 and 4
    second = Schedule(settings, clock)  # resumes after tick 2: catches up 3 and 4
    wait_for(4)
    clock.advance(60)  # tick 5
    wait_for(5)
    second.close()

    third = Schedule(settings, clock)  # restarted at once: nothing missed, nothing emitted twice
    clock.advance(60)  # tick 6
    wait_for(6)
    third.close()

    records = read_all(make_consumer, topic, 3)
    keys = sorted(key_of(m).decode() for m in records)
    assert keys == [tick_key("minutely", t) for t in tick[1:7]], keys  # one record per tick
    for msg in records:
        _, event = serde.decode(msg.value(), expected="TriggerEvent")
        assert event["event_type"] == "report.tick"
        assert json.loads(event["data_json"]) == {"report": "m"}
        assert event["idempotency_key"] == key_of(msg).decode()
        occurred = datetime.fromtimestamp(event["occurred_at"] / 1000, UTC)
        assert tick_key("minutely", occurred) == event["idempotency_key"]
        assert dict(msg.headers() or [])["tenant"] == b"acme"
