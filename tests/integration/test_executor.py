"""The executor against a real broker: commands in, committed results (and dead letters) out."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

from services.bus.topics import Topics, TopicsNotReady, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.contracts import serde
from services.executor import ActionRegistry, run_executor
from tests.fixtures.kafka import consume_until

pytestmark = pytest.mark.integration


@dataclass
class Executor:
    settings: Settings
    topics: Topics
    producer: Producer

    def send(self, action: str, inputs: Any = None, **overrides: Any) -> dict[str, Any]:
        """Produce one StepCommand (deadline 30 s ahead unless overridden); return it."""
        now_ms = int(time.time() * 1000)
        run_id = overrides.pop("run_id", f"run-{uuid.uuid4().hex[:8]}")
        step_id = overrides.pop("step_id", "s1")
        command: dict[str, Any] = {
            "run_id": run_id,
            "tenant": "acme",
            "workflow": "wf",
            "version": 1,
            "step_id": step_id,
            "attempt": 1,
            "action": action,
            "inputs_json": json.dumps({} if inputs is None else inputs),
            "idempotency_key": f"{run_id}:{step_id}:1",
            "deadline": now_ms + 30_000,
            "scopes": [],
            "correlation_id": f"corr-{run_id}",
            "issued_at": now_ms,
            "reply_partition": 1,
            **overrides,
        }
        self.producer.produce(self.topics.commands, serde.encode("StepCommand", command), key=run_id)
        return command


class Running:
    """``run_executor`` in a thread; :meth:`stop` stops it and re-raises what it raised."""

    def __init__(self, settings: Settings, instance_id: str) -> None:
        self.stop_event, self.ready = threading.Event(), threading.Event()
        self.failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._target, args=(settings, instance_id), daemon=True)
        self.thread.start()
        assert self.ready.wait(60), f"executor {instance_id} got no assignment within 60 s"
        assert not self.failure, self.failure

    def _target(self, settings: Settings, instance_id: str) -> None:
        try:
            run_executor(
                settings,
                self.stop_event,
                instance_id=instance_id,
                registry=ActionRegistry.load(),
                ready=self.ready,
            )
        except BaseException as exc:
            self.failure.append(exc)
            self.ready.set()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "executor did not stop"
        assert not self.failure, self.failure


def make_settings(kafka_bootstrap: str, unique: str) -> Settings:
    settings = Settings(
        topic_prefix=f"t{unique}",
        kafka_bootstrap_servers=kafka_bootstrap,
        internal_partitions=2,
        egress_allow_private=True,  # http.request calls test servers on 127.0.0.1
    )
    ensure_topics(admin_client(settings), internal_specs(settings))
    return settings


@pytest.fixture
def executor(kafka_bootstrap: str, unique: str) -> Iterator[Executor]:
    settings = make_settings(kafka_bootstrap, unique)
    running = Running(settings, "it")
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    yield Executor(settings, Topics(settings.topic_prefix), producer)
    producer.flush(10)
    running.stop()


def read_results(
    make_consumer: Callable[..., Consumer], ex: Executor, count: int, timeout_s: float = 60
) -> dict[str, tuple[Message, dict[str, Any]]]:
    """``count`` committed StepResults from the inbox, by run id."""
    ex.producer.flush(10)
    consumer = make_consumer([ex.topics.inbox])
    messages = consume_until(consumer, lambda seen: len(seen) >= count, timeout_s=timeout_s)
    results = {}
    for msg in messages:
        kind, body = serde.decode_inbox(msg.value())
        assert kind == "StepResult"
        results[body["run_id"]] = (msg, body)
    assert len(results) == count
    return results


def test_noop_succeeds_with_result_routed_to_reply_partition(
    executor: Executor, make_consumer: Callable[..., Consumer]
) -> None:
    command = executor.send("noop")
    msg, result = read_results(make_consumer, executor, 1)[command["run_id"]]
    assert result["status"] == "succeeded"
    assert json.loads(result["output_json"]) == {}
    assert (result["step_id"], result["attempt"], result["executor_id"]) == ("s1", 1, "it")
    assert msg.partition() == 1
    assert msg.key() == command["run_id"].encode()
    assert dict(msg.headers() or []) == {
        "tenant": b"acme",
        "run_id": command["run_id"].encode(),
        "correlation_id": command["correlation_id"].encode(),
    }


def test_outputs_and_failures(executor: Executor, make_consumer: Callable[..., Consumer]) -> None:
    echo = executor.send("echo", {"greeting": "hi", "n": [1, 2]})
    fail = executor.send("fail", {"error_kind": "boom", "message": "nope", "retryable": False})
    flaky = executor.send("fail", {"fail_attempts": 1}, attempt=2)
    unknown = executor.send("does.not_exist")
    invalid = executor.send("sleep", {"seconds": "long"})
    results = read_results(make_consumer, executor, 5)

    echoed = results[echo["run_id"]][1]
    assert echoed["status"] == "succeeded"
    assert json.loads(echoed["output_json"]) == {"greeting": "hi", "n": [1, 2]}

    failed = results[fail["run_id"]][1]
    assert (failed["status"], failed["error_kind"], failed["error_message"], failed["retryable"]) == (
        "failed",
        "boom",
        "nope",
        False,
    )
    assert results[flaky["run_id"]][1]["status"] == "succeeded"

    missing = results[unknown["run_id"]][1]
    assert (missing["status"], missing["error_kind"], missing["retryable"]) == (
        "failed",
        "unknown_action",
        False,
    )
    assert results[invalid["run_id"]][1]["error_kind"] == "invalid_input"


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_deadlines(executor: Executor, make_consumer: Callable[..., Consumer]) -> None:
    now_ms = int(time.time() * 1000)
    slow = executor.send("sleep", {"seconds": 30}, deadline=now_ms + 500)
    expired = executor.send("noop", deadline=now_ms - 1000)
    started = time.monotonic()
    results = read_results(make_consumer, executor, 2)
    assert time.monotonic() - started < 20
    for command in (slow, expired):
        result = results[command["run_id"]][1]
        assert (result["status"], result["error_kind"], result["retryable"]) == ("failed", "timeout", True)
    assert "before the attempt started" in results[expired["run_id"]][1]["error_message"]


def test_undecodable_records_are_dead_lettered(
    executor: Executor, make_consumer: Callable[..., Consumer]
) -> None:
    executor.producer.produce(
        executor.topics.commands,
        b"garbage bytes",
        key=b"k1",
        headers=[("tenant", b"acme"), ("correlation_id", b"c-1")],
    )
    bad_partition = executor.send("noop", reply_partition=7)
    good = executor.send("noop")
    executor.producer.flush(10)

    dlq = make_consumer([executor.topics.dlq])
    letters = [
        serde.decode(m.value(), expected="DeadLetter")[1]
        for m in consume_until(dlq, lambda seen: len(seen) >= 2, timeout_s=60)
    ]
    by_kind = {letter["error_kind"]: letter for letter in letters}
    assert set(by_kind) == {"bad_framing", "bad_reply_partition"}
    garbage = by_kind["bad_framing"]
    assert garbage["service"] == "executor"
    assert garbage["original_value"] == b"garbage bytes"
    assert garbage["original_key"] == b"k1"
    assert garbage["original_topic"] == executor.topics.commands
    assert (garbage["tenant"], garbage["correlation_id"]) == ("acme", "c-1")
    assert "magic byte" in garbage["error_message"]
    assert by_kind["bad_reply_partition"]["run_id"] == bad_partition["run_id"]

    results = read_results(make_consumer, executor, 1)  # the batch went on past the poison records
    assert results[good["run_id"]][1]["status"] == "succeeded"


@pytest.mark.serial  # wall-clock bound: run alone (tests/conftest.py)
def test_many_slow_actions_run_concurrently(
    executor: Executor, make_consumer: Callable[..., Consumer]
) -> None:
    count = 200
    started = time.monotonic()
    sent = [executor.send("sleep", {"seconds": 0.2}) for _ in range(count)]
    results = read_results(make_consumer, executor, count, timeout_s=60)
    elapsed = time.monotonic() - started
    assert {r["status"] for _, r in results.values()} == {"succeeded"}
    assert set(results) == {c["run_id"] for c in sent}
    assert elapsed < 10, f"{count} x 0.2 s sleeps took {elapsed:.1f} s: not concurrent"


def test_missing_topics_fail_fast_with_a_clear_message(kafka_bootstrap: str, unique: str) -> None:
    settings = Settings(topic_prefix=f"none{unique}", kafka_bootstrap_servers=kafka_bootstrap)
    with pytest.raises(TopicsNotReady, match=rf"none{unique}\.commands: missing"):
        run_executor(settings, threading.Event())


def read_to_end(make_consumer: Callable[..., Consumer], topic: str, partitions: int) -> list[Message]:
    """Every committed record of ``topic`` (writers stopped): read to each partition's EOF."""
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
        assert partition is not None
        if error is not None and error.code() == KafkaError._PARTITION_EOF:
            at_end.add(partition)
        elif error is not None:
            raise AssertionError(f"consumer error: {error}")
        else:
            at_end.discard(partition)
            seen.append(msg)
    return seen


def test_two_instances_share_the_commands_exactly_once(
    kafka_bootstrap: str, unique: str, make_consumer: Callable[..., Consumer]
) -> None:
    settings = make_settings(kafka_bootstrap, unique)
    first = Running(settings, "a")
    ex = Executor(settings, Topics(settings.topic_prefix), Producer({"bootstrap.servers": kafka_bootstrap}))
    sent = [ex.send("sleep", {"seconds": 0.05}, reply_partition=i % 2) for i in range(100)]
    ex.producer.flush(10)
    second = Running(settings, "b")  # joins while the first instance is busy: a rebalance
    sent += [ex.send("sleep", {"seconds": 0.05}, reply_partition=i % 2) for i in range(100)]
    read_results(make_consumer, ex, len(sent))
    first.stop()
    second.stop()

    results = [serde.decode_inbox(m.value())[1] for m in read_to_end(make_consumer, ex.topics.inbox, 2)]
    assert sorted(r["run_id"] for r in results) == sorted(c["run_id"] for c in sent)  # no loss, no duplicate
    assert {r["executor_id"] for r in results} <= {"a", "b"}


_CHILD = """
import signal, sys, threading
from services.config import Settings
from services.executor import run_executor
from services.observability.logs import configure

configure("WARNING", "text")
settings = Settings(
    topic_prefix=sys.argv[1],
    kafka_bootstrap_servers=sys.argv[2],
    internal_partitions=2,
    egress_allow_private=True,  # its http.request steps call a server on 127.0.0.1
)
stop, ready = threading.Event(), threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
threading.Thread(target=lambda: (ready.wait(), print("ready", flush=True)), daemon=True).start()
run_executor(settings, stop, instance_id="crashy", ready=ready)
"""


class Child:
    """An executor in its own process, so that it can be killed without warning."""

    def __init__(self, settings: Settings) -> None:
        assert settings.kafka_bootstrap_servers is not None
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, settings.topic_prefix, settings.kafka_bootstrap_servers],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the child is assigned (or dies)
        assert line.strip() == "ready", f"executor process did not start (exit {self.proc.poll()})"


class HoldingServer:
    """A local HTTP endpoint that records Idempotency-Keys and holds responses until released."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                with server.arrived:
                    server.keys.append(self.headers["Idempotency-Key"])
                    server.arrived.notify_all()
                server.release.wait(60)
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"ok": true}')
                except OSError:
                    pass  # the caller was killed

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.keys) >= count, timeout_s), self.keys

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()


def test_a_killed_executor_loses_nothing_and_publishes_each_result_once(
    kafka_bootstrap: str, unique: str, make_consumer: Callable[..., Consumer]
) -> None:
    settings = make_settings(kafka_bootstrap, unique)
    server = HoldingServer()
    first = Child(settings)
    try:
        ex = Executor(
            settings, Topics(settings.topic_prefix), Producer({"bootstrap.servers": kafka_bootstrap})
        )
        sent = [
            ex.send("http.request", {"method": "POST", "url": server.url, "json": {"i": i}})
            for i in range(10)
        ]
        ex.producer.flush(10)
        server.wait_for(len(sent))  # every action is in flight, none has a result yet
        first.proc.kill()
        first.proc.wait(30)
        server.release.set()
        second = Child(settings)  # same instance id: fences the dead one's transactional id
        try:
            read_results(make_consumer, ex, len(sent), timeout_s=90)
        finally:
            second.proc.terminate()
            assert second.proc.wait(60) == 0
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        server.close()

    results = [serde.decode_inbox(m.value())[1] for m in read_to_end(make_consumer, ex.topics.inbox, 2)]
    assert sorted(r["run_id"] for r in results) == sorted(c["run_id"] for c in sent)  # once each
    assert {r["status"] for r in results} == {"succeeded"}
    # The side effects were at-least-once: each idempotency key reached the endpoint twice.
    assert sorted(server.keys) == sorted([c["idempotency_key"] for c in sent] * 2)
