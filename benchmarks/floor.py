"""Baseline (a): the raw Kafka floor — Switchyard's Kafka hops with no engine in between.

Per run, Switchyard does one transactional hop at intake (trigger → inbox) and two per step
(core: inbox → commands; executor: commands → inbox). The floor does exactly those hops with a
minimal Python consume → produce loop and the *same* client settings
(:func:`services.bus.clients.consumer_config`, :func:`~services.bus.clients.transactional_producer_config`,
``max_batch``, ``commit_interval_ms``: consume a batch, produce, ``send_offsets_to_transaction``,
commit), in the same process layout (a "router" process with an intake thread and a core thread,
an "executor" process). What it leaves out is everything that makes an engine: Avro, workflow
definitions, run state and its changelog, history events, guardrails. The core thread keeps the
run's progress in a dict and emits one ``first`` and one ``done`` record per run to an events
topic for the harness.

    python -m benchmarks.floor router --prefix P --shape chain
    python -m benchmarks.floor executor --prefix P
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from benchmarks.harness import FANOUT, Observation, System, Workload
from benchmarks.infra import PROCESSES, Child, Processes, pids_of, unique
from benchmarks.monitor import RootsFn
from services.bus.clients import consumer_config, plain_producer_config, transactional_producer_config
from services.config import Settings

Emit = Callable[[str, str, bytes], None]


def topic_names(prefix: str) -> dict[str, str]:
    return {name: f"{prefix}.{name}" for name in ("triggers", "inbox", "commands", "events")}


def create_topics(bootstrap: str, prefix: str, partitions: int, trigger_partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = topic_names(prefix)
    futures = admin.create_topics(
        [
            NewTopic(name, trigger_partitions if role == "triggers" else partitions, 1)
            for role, name in names.items()
        ],
        operation_timeout=30,
    )
    for future in futures.values():
        future.result(timeout=60)


def transactional_loop(
    settings: Settings,
    name: str,
    source: str,
    handle: Callable[[Message, Emit], None],
    stop: threading.Event,
) -> None:
    """consume ≤ max_batch (waiting ≤ commit interval) → handle → send offsets → commit."""
    prefix = settings.topic_prefix
    consumer = Consumer(consumer_config(settings, f"{prefix}.floor.{name}"))
    producer = Producer(transactional_producer_config(settings, f"{prefix}.floor.{name}.1"))
    producer.init_transactions(60)
    consumer.subscribe([source])
    timeout = settings.commit_interval_ms / 1000

    def emit(topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                return
            except BufferError:
                producer.poll(0.05)

    try:
        while not stop.is_set():
            messages = [m for m in consumer.consume(settings.max_batch, timeout) if not m.error()]
            if not messages:
                continue
            producer.begin_transaction()
            for msg in messages:
                handle(msg, emit)
            positions = [p for p in consumer.position(consumer.assignment()) if p.offset >= 0]
            producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(30)
    finally:
        consumer.close()


def _run_router(settings: Settings, shape: str, width: int, steps: int, stop: threading.Event) -> None:
    names = topic_names(settings.topic_prefix)
    remaining: dict[str, int] = {}

    def intake(msg: Message, emit: Emit) -> None:
        key = (msg.key() or b"").decode()
        emit(names["inbox"], key, json.dumps({"k": key, "new": True}).encode())

    def core(msg: Message, emit: Emit) -> None:
        record = json.loads(msg.value() or b"{}")
        key = record["k"]

        def command(step: int) -> None:
            emit(names["commands"], key, json.dumps({"k": key, "s": step}).encode())

        if record.get("new"):
            command(0)
            return
        step = record["s"]
        if step == 0:
            emit(names["events"], key, json.dumps({"k": key, "e": "first", "t": record["t"]}).encode())
        if shape == "chain":
            if step + 1 < steps:
                command(step + 1)
                return
        elif step == 0:
            remaining[key] = width
            for branch in range(1, width + 1):
                command(branch)
            return
        elif step <= width:
            remaining[key] -= 1
            if remaining[key] == 0:
                del remaining[key]
                command(width + 1)
            return
        emit(names["events"], key, json.dumps({"k": key, "e": "done", "t": time.time()}).encode())

    threads = [
        threading.Thread(
            target=transactional_loop, args=(settings, "intake", names["triggers"], intake, stop)
        ),
        threading.Thread(target=transactional_loop, args=(settings, "core", names["inbox"], core, stop)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _run_executor(settings: Settings, stop: threading.Event) -> None:
    names = topic_names(settings.topic_prefix)

    def execute(msg: Message, emit: Emit) -> None:
        record = json.loads(msg.value() or b"{}")
        record["t"] = time.time()  # the no-op "runs" here
        emit(names["inbox"], record["k"], json.dumps(record).encode())

    transactional_loop(settings, "executor", names["commands"], execute, stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The raw Kafka floor: consume → produce loops only.")
    parser.add_argument("role", choices=["router", "executor"])
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--shape", choices=["chain", "fanout"], default="chain")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=10)
    args = parser.parse_args(argv)
    settings = Settings(topic_prefix=args.prefix)  # bootstrap, batch and interval from the environment
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.role == "router":
        _run_router(settings, args.shape, args.width, args.steps, stop)
    else:
        _run_executor(settings, stop)


class KafkaFloorSystem(System):
    """Baseline (a) as a system under test."""

    name = "kafka-floor"
    infra = ("kafka",)

    def __init__(
        self, bootstrap: str, *, partitions: int, commit_interval_ms: int, processes: Processes = PROCESSES
    ) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.commit_interval_ms = commit_interval_ms
        self.processes = processes
        self.children: dict[str, Child] = {}
        self.names = topic_names("floor")
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None

    def start(self, workload: Workload) -> None:
        import os
        import sys

        prefix = unique("floor")
        self.names = topic_names(prefix)
        create_topics(self.bootstrap, prefix, self.partitions)
        shape = workload.shape
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SWITCHYARD_COMMIT_INTERVAL_MS": str(self.commit_interval_ms),
        }
        base = [sys.executable, "-m", "benchmarks.floor"]
        router = [*base, "router", "--prefix", prefix, "--shape", shape.name, "--steps", str(shape.steps)]
        if shape.name == "fanout":
            router += ["--width", str(FANOUT.width)]
        self.children["router"] = self.processes.start(f"{prefix}-router", router, env=env)
        self.children["executor"] = self.processes.start(
            f"{prefix}-executor", [*base, "executor", "--prefix", prefix], env=env
        )
        settings = Settings(kafka_bootstrap_servers=self.bootstrap)
        self._producer = Producer(plain_producer_config(settings, **{"linger.ms": 1}))
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": unique("floor-observer-"),
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        self._consumer.subscribe([self.names["events"]])

    def send(self, key: str, tenant: int) -> None:
        assert self._producer is not None
        while True:
            try:
                self._producer.produce(self.names["triggers"], key=key, value=b"{}")
                break
            except BufferError:
                self._producer.poll(0.01)
        self._producer.poll(0)

    def flush(self) -> None:
        assert self._producer is not None
        self._producer.flush(60)

    def poll(self, timeout_s: float) -> list[Observation]:
        assert self._consumer is not None
        for role, child in self.children.items():
            if not child.alive():
                raise RuntimeError(f"floor {role} exited:\n{child.log_tail()}")
        observations = []
        for msg in self._consumer.consume(2000, timeout_s):
            if msg.error():
                continue
            record: dict[str, Any] = json.loads(msg.value() or b"{}")
            if record["e"] == "first":
                observations.append(Observation("first", record["k"], float(record["t"])))
            else:
                observations.append(Observation("done", record["k"], time.time()))
        return observations

    def services(self) -> dict[str, RootsFn]:
        return {role: pids_of(child) for role, child in self.children.items()}

    def stop(self) -> None:
        for child in self.children.values():
            self.processes.stop(child)
        self.children.clear()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


if __name__ == "__main__":
    main()
