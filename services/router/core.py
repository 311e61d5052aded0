"""Router core: the only writer of run state.

Consumes the inbox (run requests, step results, control commands — all keyed and partitioned by
run) and keeps, per owned partition, every run in memory, backed by the compacted changelog
(the router-state topic, same partition number). Each transaction writes the changelog records
of the runs it changed together with the commands and history events it emits, so state and
output can never disagree; on assignment the partition's state is rebuilt from the changelog.

The workflow semantics live in :mod:`services.router.machine`; this module maps its effects to
Kafka records, enforces per-tenant and per-workflow concurrency (a run over a limit stays
``pending`` and starts in arrival order when a slot frees), fires durable timers (retries,
deadlines) and expires finished runs after the dedupe retention window.
"""

from __future__ import annotations

import heapq
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from services.bus.clients import headers_for
from services.bus.placement import slice_limit, tenant_base
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.contracts.dead_letters import encode_dead_letter
from services.observability import metrics
from services.registry.compacted import CompactedTable
from services.registry.definitions import DefinitionCatalog
from services.router import machine, records
from services.router.load import TenantLoad
from services.router.machine import Effects, Timer
from services.router.state import RunState, RunStatus
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow

log = logging.getLogger(__name__)
SERVICE = "router.core"
ACTIVE = (RunStatus.RUNNING, RunStatus.RETRYING)


@dataclass
class PartitionState:
    partition: int
    runs: dict[str, RunState] = field(default_factory=dict)
    timers: list[tuple[int, int, Timer]] = field(default_factory=list)
    pending: dict[str, list[str]] = field(default_factory=dict)  # tenant -> run ids in arrival order
    active_by_tenant: dict[str, int] = field(default_factory=dict)
    active_by_workflow: dict[tuple[str, str], int] = field(default_factory=dict)
    finished: deque[tuple[int, str]] = field(default_factory=deque)
    arrivals: int = 0
    timer_seq: int = 0

    def add_timer(self, timer: Timer) -> None:
        self.timer_seq += 1
        heapq.heappush(self.timers, (timer.due_ms, self.timer_seq, timer))


class CoreProcessor:
    def __init__(
        self,
        settings: Settings,
        catalog: DefinitionCatalog,
        tenants: CompactedTable[TenantConfig],
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        load: TenantLoad | None = None,
    ) -> None:
        self.load = load or TenantLoad()
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.catalog = catalog
        self.tenants = tenants
        self.clock = clock
        self.rand = rand
        self.partitions: dict[int, PartitionState] = {}
        self.dirty: dict[str, RunState] = {}
        self.retention_ms = int(settings.finished_run_retention_s * 1000)
        self._admitting = False
        self._admit_again = False

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # --- assignment and restore --------------------------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        owned = [p.partition for p in partitions if p.topic == self.topics.inbox]
        started = time.monotonic()
        for number, state in self._restore(owned).items():
            self.partitions[number] = state
        metrics.ROUTER_RESTORE_SECONDS.observe(time.monotonic() - started)
        metrics.ROUTER_STATE_RUNS.set(sum(len(p.runs) for p in self.partitions.values()))
        self._publish_gauges()

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.topics.inbox:
                self.partitions.pop(tp.partition, None)
        self._publish_gauges()

    def on_abort(self) -> None:
        """The batch's transaction was aborted: rebuild every owned partition from the changelog."""
        self.dirty.clear()
        owned = list(self.partitions)
        self.partitions = self._restore(owned)

    def _restore(self, numbers: list[int]) -> dict[int, PartitionState]:
        states = {n: PartitionState(n) for n in numbers}
        if not numbers:
            return states
        conf = self.settings.kafka_config()
        conf.update(
            {
                "group.id": f"{self.settings.topic_prefix}.router-restore",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        consumer = Consumer(conf)
        try:
            consumer.assign([TopicPartition(self.topics.router_state, n, OFFSET_BEGINNING) for n in numbers])
            remaining = set(numbers)
            deadline = time.monotonic() + 300
            while remaining and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            remaining.discard(msg.partition() or 0)
                        continue
                    key = (msg.key() or b"").decode()
                    state = states[msg.partition() or 0]
                    if msg.value() is None:
                        state.runs.pop(key, None)
                        continue
                    _, record = serde.decode(msg.value(), expected="RouterState")
                    state.runs[key] = RunState.from_json(record["snapshot_json"])
            if remaining:
                raise RuntimeError(f"router state restore did not finish for partitions {sorted(remaining)}")
        finally:
            consumer.close()
        for state in states.values():
            self._reindex(state)
        log.info(
            "router state restored",
            extra={"partitions": numbers, "runs": sum(len(s.runs) for s in states.values())},
        )
        return states

    def _reindex(self, state: PartitionState) -> None:
        pending: list[RunState] = []
        for run in state.runs.values():
            state.arrivals = max(state.arrivals, run.arrival)
            if run.status == RunStatus.PENDING:
                pending.append(run)
            elif run.status in ACTIVE:
                self._count(state, run, +1)
                for step_id, rec in run.steps.items():
                    if rec.status == "running" and rec.deadline_ms is not None:
                        state.add_timer(Timer(rec.deadline_ms, run.run_id, step_id, rec.attempt, "deadline"))
                    elif rec.status == "retrying" and rec.retry_at_ms is not None:
                        state.add_timer(Timer(rec.retry_at_ms, run.run_id, step_id, rec.attempt, "retry"))
            elif run.finished_ms is not None:
                state.finished.append((run.finished_ms, run.run_id))
        for run in sorted(pending, key=lambda r: r.arrival):
            state.pending.setdefault(run.tenant, []).append(run.run_id)
        state.finished = deque(sorted(state.finished))

    # --- processing ----------------------------------------------------------------------------------
    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        for msg in messages:
            state = self.partitions.get(msg.partition() or 0)
            if state is None:  # not ours any more (revoked mid-batch); it will be redelivered
                continue
            started = time.perf_counter()
            try:
                kind, body = serde.decode_inbox(msg.value())
            except serde.ContractError as exc:
                self._dead_message(msg, out, exc.kind, exc.message)
                continue
            tenant = body.get("tenant", "")
            try:
                if kind == "RunRequested":
                    self._requested(state, body, msg, out)
                elif kind == "StepResult":
                    self._result(state, body, msg, out)
                else:
                    self._control(state, body, msg, out)
            except Exception as exc:  # a bug or an unexpected record must not stall the partition
                log.exception(
                    "inbox record failed",
                    extra={
                        "tenant": tenant,
                        "run_id": body.get("run_id"),
                        "correlation_id": body.get("correlation_id"),
                    },
                )
                self._dead_message(msg, out, "router_error", f"{type(exc).__name__}: {exc}", tenant)
            metrics.HANDLER_SECONDS.labels(SERVICE, kind, tenant).observe(time.perf_counter() - started)
        self._flush_dirty(out)

    def tick(self, out: Outbox) -> None:
        now = self.now_ms()
        for state in list(self.partitions.values()):
            while state.timers and state.timers[0][0] <= now:
                _, _, timer = heapq.heappop(state.timers)
                run = state.runs.get(timer.run_id)
                workflow = self._workflow(run) if run else None
                if run is None or workflow is None:
                    continue
                self._apply(state, run, machine.on_timer(run, workflow, timer, now, self.rand()), out)
            self._expire(state, now, out)
        self._flush_dirty(out)

    def _requested(self, state: PartitionState, body: dict[str, Any], msg: Message, out: Outbox) -> None:
        run_id = body["run_id"]
        if run_id in state.runs:
            metrics.TRIGGERS.labels(body["tenant"], "duplicate").inc()
            log.info(
                "duplicate run request ignored",
                extra={"tenant": body["tenant"], "run_id": run_id, "correlation_id": body["correlation_id"]},
            )
            return
        workflow = self.catalog.get(body["tenant"], body["workflow"], body["version"])
        if workflow is None:
            self._dead_message(
                msg,
                out,
                "unknown_definition",
                f"{body['workflow']} v{body['version']} is not a verified definition of "
                f"tenant {body['tenant']}",
                body["tenant"],
            )
            return
        state.arrivals += 1
        try:
            data = json.loads(body["data_json"])
        except ValueError:
            data = body["data_json"]
        run = RunState(
            run_id=run_id,
            tenant=body["tenant"],
            workflow=workflow.name,
            version=workflow.version,
            partition=state.partition,
            correlation_id=body["correlation_id"],
            idempotency_key=body["idempotency_key"],
            trigger={
                "event": body["event_type"],
                "data": data,
                "key": body["idempotency_key"],
                "tenant": body["tenant"],
            },
            arrival=state.arrivals,
            created_ms=self.now_ms(),
            steps=machine.new_run_steps(workflow),
        )
        state.runs[run_id] = run
        metrics.RUNS_STARTED.labels(run.tenant, run.workflow).inc()
        self._apply(state, run, machine.admitted(run, body["source"]), out)
        state.pending.setdefault(run.tenant, []).append(run_id)
        self._admit(state, run.tenant, out)

    def _result(self, state: PartitionState, body: dict[str, Any], msg: Message, out: Outbox) -> None:
        run = state.runs.get(body["run_id"])
        if run is None:
            metrics.STALE_RESULTS.labels(body["tenant"], "unknown_run").inc()
            self._dead_message(
                msg, out, "unknown_run", f"result for unknown run {body['run_id']}", body["tenant"]
            )
            return
        if run.tenant != body["tenant"]:
            metrics.STALE_RESULTS.labels(body["tenant"], "tenant_mismatch").inc()
            self._dead_message(
                msg,
                out,
                "tenant_mismatch",
                f"result claims tenant {body['tenant']!r} for a run of another tenant",
                body["tenant"],
            )
            return
        workflow = self._workflow(run)
        if workflow is None:
            self._dead_message(
                msg, out, "unknown_definition", "the run's definition is no longer verified", run.tenant
            )
            return
        effects = machine.on_result(
            run,
            workflow,
            body,
            self.now_ms(),
            self.rand(),
            max_run_output_bytes=self.settings.max_run_output_bytes,
        )
        for event in effects.events:
            if event.type == "result_ignored":
                metrics.STALE_RESULTS.labels(run.tenant, (event.detail or {}).get("reason", "")).inc()
        self._apply(state, run, effects, out)

    def _control(self, state: PartitionState, body: dict[str, Any], msg: Message, out: Outbox) -> None:
        """Cancel or replay one run. Every command ends in the run's history (accepted or refused)
        or, when there is no such run of that tenant, in the DLQ — never silently dropped."""
        run = state.runs.get(body.get("run_id") or "")
        if run is None or run.tenant != body["tenant"]:
            hint = "" if run is None else " (it belongs to another tenant)"
            self._dead_message(
                msg,
                out,
                "control_refused",
                f"{body['kind']} by {body['requester']}: no run {body.get('run_id')} of tenant "
                f"{body['tenant']}{hint}; finished runs are kept for "
                f"{self.settings.finished_run_retention_s:.0f} s",
                body["tenant"],
                original=serde.encode("ControlCommand", body),
            )
            return
        if body["kind"] == "cancel":
            if run.status.terminal:
                refusal = f"run is already {run.status.value}"
                self._apply(state, run, Effects(events=[machine.control_event(body, refusal)]), out)
                return
            was_pending = run.status == RunStatus.PENDING
            effects = machine.cancel(run, body["requester"], body["reason"])
            effects.events.insert(0, machine.control_event(body))
            if was_pending:
                queue = state.pending.get(run.tenant, [])
                if run.run_id in queue:
                    queue.remove(run.run_id)
            self._apply(state, run, effects, out, was_active=not was_pending)
            return
        workflow = self._workflow(run)
        try:
            if workflow is None:
                raise ValueError("the run's definition is no longer verified")
            if run.replays >= self.settings.max_replays_per_run:
                raise ValueError(f"replay limit of {self.settings.max_replays_per_run} reached for this run")
            steps = machine.steps_to_replay(run, workflow, body["kind"], body.get("step_id"))
        except ValueError as exc:
            self._apply(state, run, Effects(events=[machine.control_event(body, str(exc))]), out)
            return
        self._apply(state, run, machine.replay(run, steps, body), out)
        state.pending.setdefault(run.tenant, []).append(run.run_id)
        self._admit(state, run.tenant, out)

    # --- effects ------------------------------------------------------------------------------------------
    def _apply(
        self,
        state: PartitionState,
        run: RunState,
        effects: Effects,
        out: Outbox,
        was_active: bool | None = None,
    ) -> None:
        now = self.now_ms()
        headers = headers_for(run.tenant, run.run_id, run.correlation_id)
        for event in effects.events:
            out.send(
                self.topics.events,
                records.run_event(run, event, now),
                key=run.run_id,
                partition=run.partition,
                headers=headers,
            )
            if event.type == "step_retrying" or (
                event.type == "step_timed_out" and event.state == "retrying"
            ):
                metrics.STEP_RETRIES.labels(run.tenant, run.workflow).inc()
        if effects.commands:
            workflow = self._workflow(run)
            scopes = list(workflow.definition.scopes) if workflow else []
            for command in effects.commands:
                out.send(
                    self.topics.commands,
                    records.step_command(run, command, scopes, now),
                    key=run.run_id,
                    partition=run.partition,
                    headers=headers,
                )
        for timer in effects.timers:
            state.add_timer(timer)
        for dead in effects.dead_letters:
            out.send(
                self.topics.dlq,
                encode_dead_letter(
                    SERVICE,
                    dead["error_kind"],
                    dead["error_message"],
                    now,
                    tenant=run.tenant,
                    correlation_id=run.correlation_id,
                    run_id=run.run_id,
                    step_id=dead["step_id"],
                    attempt=dead["attempt"],
                ),
                key=run.run_id,
                headers=headers,
            )
            metrics.DLQ_RECORDS.labels(SERVICE, dead["error_kind"], run.tenant).inc()
        self.dirty[run.run_id] = run
        if effects.finished:
            run.finished_ms = now
            state.finished.append((now, run.run_id))
            metrics.RUNS_FINISHED.labels(run.tenant, run.workflow, run.status.value).inc()
            active = was_active if was_active is not None else True
            if active:
                self._count(state, run, -1)
                self._admit(state, run.tenant, out)
            log.info(
                "run %s",
                run.status.value,
                extra={"tenant": run.tenant, "run_id": run.run_id, "correlation_id": run.correlation_id},
            )

    def _flush_dirty(self, out: Outbox) -> None:
        if not self.dirty:
            return
        now = self.now_ms()
        for run in self.dirty.values():
            out.send(
                self.topics.router_state, records.changelog(run, now), key=run.run_id, partition=run.partition
            )
        self.dirty.clear()
        metrics.ROUTER_STATE_RUNS.set(sum(len(p.runs) for p in self.partitions.values()))
        self._publish_gauges()

    # --- concurrency -----------------------------------------------------------------------------------
    def _count(self, state: PartitionState, run: RunState, delta: int) -> None:
        state.active_by_tenant[run.tenant] = state.active_by_tenant.get(run.tenant, 0) + delta
        key = (run.tenant, run.workflow)
        state.active_by_workflow[key] = state.active_by_workflow.get(key, 0) + delta

    def _limits(
        self, state: PartitionState, tenant: str, workflow: CompiledWorkflow
    ) -> tuple[int, int | None]:
        config = self.tenants.get(tenant)
        partitions = self.settings.internal_partitions
        slices = max(1, min(config.slices if config else 1, partitions))
        pinned = config.base_partition if config else None
        index = (state.partition - tenant_base(tenant, partitions, pinned)) % partitions
        tenant_limit = slice_limit(config.max_concurrent_runs, slices, index) if config else 0
        wf_limit = workflow.definition.concurrency
        return tenant_limit, slice_limit(wf_limit, slices, index) if wf_limit else None

    def _admit(self, state: PartitionState, tenant: str, out: Outbox) -> None:
        """Start pending runs of ``tenant`` in arrival order while slots are free."""
        if self._admitting:
            self._admit_again = True  # a run finished while starting another: rescan after this pass
            return
        self._admitting = True
        try:
            self._admit_again = True
            while self._admit_again:
                self._admit_again = False
                self._admit_pass(state, tenant, out)
        finally:
            self._admitting = False

    def _admit_pass(self, state: PartitionState, tenant: str, out: Outbox) -> None:
        queue = state.pending.get(tenant)
        if not queue:
            return
        kept: list[str] = []
        for run_id in queue:
            run = state.runs.get(run_id)
            if run is None or run.status != RunStatus.PENDING:
                continue
            workflow = self._workflow(run)
            if workflow is None:
                kept.append(run_id)
                continue
            tenant_limit, wf_limit = self._limits(state, tenant, workflow)
            if state.active_by_tenant.get(tenant, 0) >= tenant_limit:
                kept.append(run_id)
                kept.extend(queue[queue.index(run_id) + 1 :])
                break
            if wf_limit is not None and state.active_by_workflow.get((tenant, run.workflow), 0) >= wf_limit:
                kept.append(run_id)
                continue
            self._count(state, run, +1)
            self._apply(state, run, machine.start(run, workflow, self.now_ms()), out)
        state.pending[tenant] = kept

    # --- retention --------------------------------------------------------------------------------------
    def _expire(self, state: PartitionState, now: int, out: Outbox) -> None:
        while state.finished and state.finished[0][0] + self.retention_ms <= now:
            finished_at, run_id = state.finished.popleft()
            run = state.runs.get(run_id)
            if run is not None and run.status.terminal and run.finished_ms == finished_at:
                del state.runs[run_id]
                self.dirty.pop(run_id, None)
                out.send(self.topics.router_state, None, key=run_id, partition=state.partition)

    # --- helpers -------------------------------------------------------------------------------------------
    def _workflow(self, run: RunState) -> CompiledWorkflow | None:
        return self.catalog.get(run.tenant, run.workflow, run.version)

    def _dead_message(
        self,
        msg: Message,
        out: Outbox,
        kind: str,
        message: str,
        tenant: str | None = None,
        original: bytes | None = None,
    ) -> None:
        """Dead-letter an inbox record; ``original`` replaces its value (e.g. the bare ControlCommand,
        so the audit trail holds what the operator sent rather than the inbox envelope)."""
        out.send(
            self.topics.dlq,
            encode_dead_letter(
                SERVICE,
                kind,
                message,
                self.now_ms(),
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                key=msg.key(),
                value=original if original is not None else msg.value(),
                tenant=tenant,
            ),
            key=tenant,
        )
        metrics.DLQ_RECORDS.labels(SERVICE, kind, tenant or "").inc()
        log.warning("inbox record dead-lettered: %s", message, extra={"tenant": tenant, "error_kind": kind})

    def _publish_gauges(self) -> None:
        running: dict[str, int] = {}
        pending: dict[str, int] = {}
        for state in self.partitions.values():
            for tenant, count in state.active_by_tenant.items():
                running[tenant] = running.get(tenant, 0) + count
            for tenant, queue in state.pending.items():
                pending[tenant] = pending.get(tenant, 0) + len(queue)
        for tenant, count in running.items():
            metrics.RUNS_IN_FLIGHT.labels(tenant).set(count)
        for tenant, count in pending.items():
            metrics.RUNS_PENDING.labels(tenant).set(count)
        self.load.set_pending(pending)
