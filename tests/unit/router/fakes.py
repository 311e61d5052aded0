"""Fakes for driving the router core without a broker: an outbox that keeps what is sent (and checks
sizes as the real one does), a definitions catalog and a tenants table in memory, real
``confluent_kafka.Message`` inbox records, and a settable clock."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Message

from services.bus.record_budget import RecordTooLarge, record_size
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.router.core import CoreProcessor
from services.router.records import run_id_for
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow, compile_workflow
from services.workflow.loader import load_definition_file, load_definition_text

PREFIX = "u"
TOPICS = Topics(PREFIX)
TENANT = "acme"
LINEAR = compile_workflow(
    load_definition_file(Path(__file__).resolve().parents[3] / "deploy" / "examples" / "linear-chain.yaml")
)
LINEAR_STEPS = ["receive", "enrich", "pause", "done"]


def workflow(text: str) -> CompiledWorkflow:
    return compile_workflow(load_definition_text(text, filename="wf.yaml"))


ONE_STEP = workflow(
    """
name: one
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, inputs: {x: "${{ trigger.data }}"}, timeout: 5}
"""
)
# A retried step then a dependent one; with LINEAR and ONE_STEP, the property tests' workflows.
RETRYING = workflow(
    """
name: retrying
version: 1
trigger: {event: go}
steps:
  - {id: a, action: echo, inputs: {v: "${{ trigger.data }}"}, timeout: 2,
     retry: {max_attempts: 3, initial_backoff: 1, max_backoff: 1, jitter: 0}}
  - {id: b, action: echo, needs: [a], inputs: {v: "${{ steps.a.output }}"}}
"""
)
WORKFLOWS = [ONE_STEP, LINEAR, RETRYING]


@dataclass(frozen=True)
class Sent:
    topic: str
    value: bytes | None
    key: str | bytes | None
    partition: int | None
    headers: list[tuple[str, str | bytes | None]] | None

    @property
    def size(self) -> int:
        return record_size(self.key, self.value, self.headers)


class FakeOutbox(Outbox):
    """The :class:`services.bus.txloop.Outbox` contract: ``send`` refuses (``RecordTooLarge``) and
    produces nothing when a record is over ``max_record_bytes``."""

    # An Outbox (where the core takes one) that keeps what is sent: no producer, so no super().__init__
    def __init__(self, max_record_bytes: int = 999_000) -> None:
        self.max_record_bytes = max_record_bytes
        self.sent: list[Sent] = []
        self.positions: dict[tuple[str, int], int] = {}
        self.count = 0

    def commit_position(self, topic: str, partition: int, offset: int) -> None:
        self.positions[(topic, partition)] = offset

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: str | bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        size = record_size(key, value, headers)
        if size > self.max_record_bytes:
            raise RecordTooLarge(topic, size, self.max_record_bytes)
        self.sent.append(Sent(topic, value, key, partition, headers))
        self.count += 1

    # --- reading back -----------------------------------------------------------------------------
    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def events(self, run_id: str | None = None) -> list[dict[str, Any]]:
        out = []
        for s in self.on(TOPICS.events):
            event = serde.decode(s.value, expected="RunEvent")[1]
            if run_id is None or event["run_id"] == run_id:
                event["detail"] = json.loads(event["detail_json"]) if event["detail_json"] else None
                out.append(event)
        return out

    def types(self, run_id: str) -> list[str]:
        return [e["type"] for e in self.events(run_id)]

    def commands(self, run_id: str | None = None) -> list[dict[str, Any]]:
        cmds = [serde.decode(s.value, expected="StepCommand")[1] for s in self.on(TOPICS.commands)]
        return [c for c in cmds if run_id is None or c["run_id"] == run_id]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [serde.decode(s.value, expected="DeadLetter")[1] for s in self.on(TOPICS.dlq)]

    def state_records(self, run_id: str) -> list[Sent]:
        key = run_id
        return [s for s in self.on(TOPICS.router_state) if s.key == key]


@dataclass
class FakeCatalog:
    """Verified definitions by (tenant, name, version); ``untrusted`` ones are no longer returned."""

    workflows: dict[tuple[str, str, int], CompiledWorkflow] = field(default_factory=dict)
    untrusted: dict[tuple[str, str, int], str] = field(default_factory=dict)

    def add(self, wf: CompiledWorkflow, tenant: str = TENANT) -> None:
        self.workflows[(tenant, wf.name, wf.version)] = wf

    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None:
        if (tenant, name, version) in self.untrusted:
            return None
        return self.workflows.get((tenant, name, version))

    def untrusted_reason(self, tenant: str, workflow: str, version: int) -> str | None:
        return self.untrusted.get((tenant, workflow, version))

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]:
        latest: dict[str, CompiledWorkflow] = {}
        for (owner, name, version), wf in sorted(self.workflows.items()):
            if owner == tenant and (owner, name, version) not in self.untrusted:
                latest[name] = wf
        return list(latest.values())


@dataclass
class FakeTenants:
    configs: dict[str, TenantConfig] = field(default_factory=dict)

    def get(self, key: str) -> TenantConfig | None:
        return self.configs.get(key)


class Clock:
    def __init__(self, start_s: float = 1_000_000.0) -> None:
        self.now = start_s

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "topic_prefix": PREFIX,
        "internal_partitions": 1,
        "kafka_bootstrap_servers": None,
        "kafka_options": {},
    }
    values.update(overrides)
    return Settings(**values)


class Harness:
    """A core owning partition 0 of a one-partition engine, with tenant ``acme``."""

    def __init__(
        self,
        *workflows: CompiledWorkflow,
        max_concurrent_runs: int = 100,
        max_record_bytes: int = 999_000,
        **setting_overrides: Any,
    ) -> None:
        self.clock = Clock()
        self.catalog = FakeCatalog()
        for wf in workflows or (LINEAR,):
            self.catalog.add(wf)
        self.tenants = FakeTenants(
            {TENANT: TenantConfig(tenant=TENANT, max_concurrent_runs=max_concurrent_runs)}
        )
        self.settings = settings(**setting_overrides)
        self.core = CoreProcessor(
            self.settings, self.catalog, self.tenants, clock=self.clock, rand=lambda: 0.5
        )
        self.core.partitions[0] = self.core.new_partition(0)
        self.out = FakeOutbox(max_record_bytes)
        self.offset = 0

    @property
    def state(self) -> Any:
        return self.core.partitions[0]

    def message(self, value: bytes | None, key: bytes | None = b"k") -> Message:
        self.offset += 1
        return Message(topic=TOPICS.inbox, partition=0, offset=self.offset, key=key, value=value)

    def feed(self, *values: bytes | None) -> None:
        """One batch, committed (as the loop would: process, tick, commit)."""
        self.core.process([self.message(v) for v in values], self.out)
        self.core.on_committed()

    def tick(self, advance_s: float = 0.0) -> None:
        self.clock.advance(advance_s)
        self.core.tick(self.out)
        self.core.on_committed()

    # --- inbox records ----------------------------------------------------------------------------
    def request(
        self,
        key: str,
        data: Any = None,
        *,
        wf: CompiledWorkflow = LINEAR,
        data_json: str | None = None,
        **extra: Any,
    ) -> bytes:
        body = {
            "run_id": run_id_for(TENANT, wf.name, key),
            "tenant": TENANT,
            "workflow": wf.name,
            "version": wf.version,
            "event_type": "go",
            "data_json": data_json if data_json is not None else json.dumps(data if data is not None else {}),
            "idempotency_key": key,
            "correlation_id": f"c-{key}"[:200],
            "requested_at": 0,
            "source": "t/0/0",
            **extra,
        }
        return serde.encode_inbox("RunRequested", body)

    def start(self, key: str, data: Any = None, wf: CompiledWorkflow = LINEAR) -> str:
        self.feed(self.request(key, {"message": "m"} if data is None else data, wf=wf))
        return run_id_for(TENANT, wf.name, key)

    def result(
        self,
        run_id: str,
        step: str,
        attempt: int = 1,
        *,
        ok: bool = True,
        output_json: str | None = '{"message": "hi"}',
        **extra: Any,
    ) -> bytes:
        body = {
            "run_id": run_id,
            "tenant": TENANT,
            "step_id": step,
            "attempt": attempt,
            "status": "succeeded" if ok else "failed",
            "output_json": output_json if ok else None,
            "error_kind": None if ok else "boom",
            "error_message": None if ok else "it broke",
            "retryable": False,
            "started_at": 0,
            "finished_at": 0,
            "correlation_id": "c",
            "executor_id": "e1",
            **extra,
        }
        return serde.encode_inbox("StepResult", body)

    def control(self, kind: str, run_id: str | None, step: str | None = None, **extra: Any) -> bytes:
        body = {
            "command_id": str(uuid.uuid4()),
            "kind": kind,
            "requester": "ops@acme",
            "tenant": TENANT,
            "run_id": run_id,
            "step_id": step,
            "reason": "test",
            "correlation_id": "cc",
            "issued_at": int(self.clock.now * 1000),
            "filter_json": None,
            "dry_run": False,
            **extra,
        }
        return serde.encode_inbox("ControlCommand", body)

    def finish(
        self, run_id: str, steps: list[str] = LINEAR_STEPS, output_json: str = '{"message": "hi"}'
    ) -> None:
        """Report every step of a run as succeeded, in order."""
        for step in steps:
            self.feed(self.result(run_id, step, output_json=output_json))


def seqs(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


TERMINAL = {"run_succeeded", "run_failed", "run_cancelled"}


def history_problems(events: list[dict[str, Any]]) -> list[str]:
    """What is wrong with one run's history: a gap or repeat in seq, a terminal event that does not
    follow a start or a replay (so: one terminal event per life of the run), or news of an attempt
    that was never scheduled."""
    problems = []
    numbers = sorted(seqs(events))
    if numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"seq not 1..n: {numbers}")
    open_ = True
    scheduled: set[tuple[str, int]] = set()
    for event in sorted(events, key=lambda e: e["seq"]):
        attempt = (event["step_id"], event["attempt"])
        if event["type"] == "step_scheduled":
            scheduled.add(attempt)
        elif (
            event["type"].startswith("step_")
            and event["attempt"]
            and attempt not in scheduled
            and (event.get("detail") or {}).get("error_kind") != "expression_error"  # failed to render
        ):
            problems.append(f"{event['type']} of {attempt} that was never scheduled")
        if event["type"] in TERMINAL:
            if not open_:
                problems.append(f"second terminal event {event['type']} at seq {event['seq']}")
            open_ = False
        elif event["type"] == "run_replayed":
            open_ = True
    return problems
