"""Router core: the only writer of run state.

Consumes the inbox (run requests, step results, control commands — all keyed and partitioned by
run) and keeps, per owned partition, every run in memory, backed by the compacted changelog
(the router-state topic, same partition number). Each transaction writes the changelog records
of the runs it changed together with the commands and history events it emits, so state and
output can never disagree; on assignment the partition's state is rebuilt from the changelog.

The workflow semantics live in :mod:`services.router.machine`; this module dispatches inbox
records and timers to it and applies each change as a *step*. The rest has a module each: the run
store (:mod:`services.router.run_store`: runs per partition, the dirty set, pre-images for aborts,
expiry; reading the changelog back: :mod:`services.router.restore`), admission
(:mod:`services.router.admission`: per-tenant and per-workflow slots, FIFO of pending runs,
decided without calling back here), operator commands (:mod:`services.router.control`: which run
a command is about and what it does to it; the life of a command: :mod:`services.control`) and
the record mapping (:mod:`services.router.outgoing`).

Restore runs in the loop: the rebalance callback only notes new partitions, and the next
``process`` or ``tick`` reads them back before anything else. An aborted transaction puts back
only the runs it touched (``on_abort``); ``on_committed`` makes the current memory the new base.

Containment: nothing one record or one run does stops the loop. Every change to a run is a
*step* whose records are encoded and size-checked before any is sent
(:mod:`services.router.outgoing`). If the machine raises, the run is rolled back and the inbox
record dead-lettered (``router_error``); if what a step would write cannot be written, the run
ends with a small final ``run_failed`` instead (``record_too_large``, ``unencodable``, …), so its
history has no gap and exactly one terminal event. Finished runs shrink to dedupe records
(:mod:`services.router.retention`), timers of finished attempts are forgotten
(:mod:`services.router.timers`), and ``tick`` ends the runs whose definition lost its trust.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal, Protocol, TypedDict, cast

from confluent_kafka import KafkaException, Message, TopicPartition

from services.bus.placement import slice_limit, tenant_base
from services.bus.record_budget import RecordTooLarge
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde, strict_json
from services.contracts.dead_letters import bounded_identity, encode_dead_letter
from services.contracts.records import (
    ControlCommand,
    EventDelivered,
    InboxBody,
    RunParent,
    RunRequested,
    StepResult,
    decode_inbox,
)
from services.contracts.text import bounded_text
from services.contracts.vocabulary import ErrorKind, EventType
from services.observability import metrics
from services.router import control, event_waits, machine, retention, subworkflow_records, subworkflows
from services.router.admission import ACTIVE
from services.router.history import HistoryPaused, HistoryUnavailable, KnownRun, NoHistory, RunHistory
from services.router.load import TenantLoad
from services.router.machine import Effects, Timer
from services.router.outgoing import (
    OutboxFailure,
    Outgoing,
    RecordMapper,
    StepRecords,
    checked,
    error_kind,
    send,
)
from services.router.rejection import StepRejected
from services.router.restore import read_changelog
from services.router.run_store import PartitionState, RunStore, load_record, reindex
from services.router.state import RunState, RunStatus
from services.tenancy.config import TenantConfig
from services.workflow.compiled import CompiledWorkflow

log = logging.getLogger(__name__)
SERVICE = "router.core"
__all__ = ["ACTIVE", "CoreProcessor", "OutboxFailure", "PartitionState", "StepRejected"]

#: Longest run id, and longest correlation id, event type and source, a run request may carry:
#: they are copied into every record of the run (headers included).
MAX_RUN_ID = 128
MAX_REQUEST_FIELD = 1024
#: Runs of untrusted definitions ended per tick at most (the rest on the next ticks), and how
#: often definitions of open runs are checked when there is nothing left to end.
UNTRUSTED_PER_TICK = 100
TRUST_CHECK_INTERVAL_MS = 1000
#: Longest error text a failure of the core itself puts into a ``run_failed`` event.
FAILURE_MESSAGE_CHARS = 2000


class Definitions(Protocol):
    """What the core reads of the definitions registry (``DefinitionCatalog``)."""

    def get(self, tenant: str, name: str, version: int) -> CompiledWorkflow | None: ...

    def latest_for(self, tenant: str) -> list[CompiledWorkflow]: ...

    def untrusted_reason(self, tenant: str, workflow: str, version: int) -> str | None: ...


class Tenants(Protocol):
    def get(self, key: str) -> TenantConfig | None: ...


class _DeadLetterOrigin(TypedDict):
    """Where a dead-lettered inbox record came from (keyword arguments of ``encode_dead_letter``)."""

    topic: str | None
    partition: int | None
    offset: int | None
    tenant: str | None
    max_bytes: int


def describe(exc: BaseException) -> str:
    return bounded_text(f"{type(exc).__name__}: {exc}", FAILURE_MESSAGE_CHARS)


Decoded = tuple[str, InboxBody] | Exception
#: The run request's fields bounded by ``MAX_REQUEST_FIELD``.
_BOUNDED_REQUEST_FIELDS: tuple[Literal["correlation_id", "event_type", "source"], ...] = (
    "correlation_id",
    "event_type",
    "source",
)


def _decode(msg: Message) -> Decoded:
    """An inbox record decoded (once per batch), or what decoding raised (raised again when the
    record is processed, so it is contained there)."""
    try:
        return decode_inbox(msg.value())
    except Exception as exc:
        return exc


def _request_problem(body: RunRequested) -> str | None:
    run_id = body["run_id"]
    if not run_id or len(run_id) > MAX_RUN_ID:
        return f"run request: run_id must be 1 to {MAX_RUN_ID} characters, not {len(run_id)}"
    for name in _BOUNDED_REQUEST_FIELDS:
        if len(body[name]) > MAX_REQUEST_FIELD:
            return f"run request: {name} is {len(body[name])} characters; the limit is {MAX_REQUEST_FIELD}"
    return None


class CoreProcessor:
    def __init__(
        self,
        settings: Settings,
        catalog: Definitions,
        tenants: Tenants,
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        load: TenantLoad | None = None,
        history: RunHistory | None = None,
    ) -> None:
        self.load = load or TenantLoad()
        self.history: RunHistory = history or NoHistory()
        self._in_history: dict[str, KnownRun] = {}  # this batch's new run ids the history holds
        self._read_back: set[str] = set()  # runs read back from history for the current command
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.mapper = RecordMapper(self.topics, SERVICE)
        self.catalog = catalog
        self.tenants = tenants
        self.clock = clock
        self.rand = rand
        self.store = RunStore(self.mapper, settings.max_replay_state_bytes)
        self.partitions: dict[int, PartitionState] = self.store.partitions
        self.retention_ms = int(settings.finished_run_retention_s * 1000)
        self._restoring: set[int] = set()  # assigned partitions not read back yet
        self._wanted: dict[tuple[int, str], None] = {}  # (partition, tenant) queues to look at
        self._out: Outbox | None = None  # the outbox of the transaction under way
        self._next_trust_check_ms = 0
        self._place = subworkflow_records.placement(self._slices, settings.internal_partitions)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def new_partition(self, number: int) -> PartitionState:
        return self.store.new_partition(number)

    # --- assignment, restore, transaction outcome ---------------------------------------------------
    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        """Note the new partitions; they are read back from the loop (``_restore_assigned``), not
        from inside the rebalance callback."""
        for tp in partitions:
            if tp.topic == self.topics.inbox:
                self.store.drop_partition(tp.partition)
                self._restoring.add(tp.partition)

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.topic == self.topics.inbox:
                self.store.drop_partition(tp.partition)
                self._restoring.discard(tp.partition)
        self._publish_gauges()

    def on_abort(self) -> None:
        """The transaction was aborted: put back the runs it touched, from their pre-images."""
        touched = self.store.touched
        rolled_back = self.store.touched_runs()
        self.store.roll_back()
        self._resync_waits(rolled_back)
        self._wanted.clear()
        self._read_back.clear()
        self._in_history = {}
        log.info("aborted transaction rolled back in memory", extra={"runs": touched})
        metrics.ROUTER_STATE_RUNS.set(self.store.run_count)
        self._publish_gauges()

    def on_committed(self) -> None:
        """The transaction committed: memory is what the changelog holds."""
        self.store.committed()

    def _begin(self, out: Outbox) -> None:
        """Called first by ``process`` and ``tick``. A new outbox means a new transaction: the
        previous one committed, or was aborted (and rolled back) or had nothing to write, so its
        pre-images can go (``on_committed`` does it too, when the loop calls it). Then restore
        what was assigned since the last call."""
        if out is not self._out:
            self._out = out
            self.store.committed()
        self._restore_assigned()

    def _restore_assigned(self) -> None:
        """Read the newly assigned partitions back from the changelog. Raises a
        :class:`KafkaException` past ``SWITCHYARD_RESTORE_DEADLINE_S``: the loop aborts, rewinds
        and comes back here."""
        if not self._restoring:
            return
        numbers = sorted(self._restoring)
        states = {n: self.store.new_partition(n) for n in numbers}
        sizes: dict[int, dict[str, int]] = {n: {} for n in numbers}

        def load(number: int, key: bytes | None, value: bytes | None) -> None:
            if number in states:
                load_record(states[number], sizes[number], key, value)

        started = time.monotonic()
        read_changelog(self.settings, numbers, load, self.settings.restore_deadline_s)
        for number, state in states.items():
            reindex(state, sizes[number])
            state.waits.rebuild(state.runs.values(), self._workflow)
            self.partitions[number] = state
        self._restoring.clear()
        metrics.ROUTER_RESTORE_SECONDS.observe(time.monotonic() - started)
        metrics.ROUTER_STATE_RUNS.set(self.store.run_count)
        self._publish_gauges()
        log.info(
            "router state restored",
            extra={
                "partitions": numbers,
                "runs": sum(len(s.runs) for s in states.values()),
                "restore_s": round(time.monotonic() - started, 3),
            },
        )

    # --- processing ----------------------------------------------------------------------------------
    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        self._begin(out)
        decoded = [_decode(msg) for msg in messages]
        self._look_up_history(messages, decoded)
        for msg, item in zip(messages, decoded, strict=True):
            state = self.partitions.get(msg.partition() or 0)
            if state is None:  # not ours any more (revoked mid-batch); it will be redelivered
                continue
            started = time.perf_counter()
            kind, tenant = "invalid", None
            body: InboxBody | None = None
            try:
                if isinstance(item, Exception):
                    raise item
                kind, body = item
                tenant = body.get("tenant")
                # The kind names the body's schema (decode_inbox): narrowed here, once.
                if kind == "RunRequested":
                    self._requested(state, cast(RunRequested, body), out)
                elif kind == "StepResult":
                    self._result(state, cast(StepResult, body), out)
                elif kind == "ControlCommand":
                    self._control(state, cast(ControlCommand, body), out)
                elif kind == "EventDelivered":
                    self._event(state, cast(EventDelivered, body), out)
                else:
                    raise StepRejected("wrong_schema", f"{kind} is not an inbox record the core applies")
                self._admit_wanted(out)
            except serde.ContractError as exc:
                self._dead_message(msg, out, exc.kind, exc.message)
            except StepRejected as exc:
                self._dead_message(msg, out, exc.kind, exc.message, tenant, exc.original)
            except (KafkaException, OutboxFailure):
                raise
            except Exception as exc:  # a bug or an unexpected record must not stall the partition
                log.exception(
                    "inbox record failed",
                    extra={
                        "tenant": bounded_text(str(tenant), 256),
                        "run_id": bounded_text(str(body.get("run_id") if body else None), 256),
                        "correlation_id": bounded_text(
                            str(body.get("correlation_id") if body else None), 256
                        ),
                    },
                )
                self._dead_message(msg, out, "router_error", describe(exc), tenant)
            metrics.HANDLER_SECONDS.labels(SERVICE, kind, self._label(tenant)).observe(
                time.perf_counter() - started
            )
        self._flush_dirty(out)

    def _look_up_history(self, messages: Sequence[Message], decoded: Sequence[Decoded]) -> None:
        """Ask the history, in one statement, which of the batch's new run ids it already holds
        (runs that left router memory). If it cannot answer, the batch's runs are deduplicated
        against memory only (the engine does not stop for the history database), loudly."""
        self._in_history = {}
        if not self.history.enabled:
            return
        wanted: dict[str, None] = {}
        for msg, item in zip(messages, decoded, strict=True):
            if isinstance(item, Exception) or item[0] != "RunRequested":
                continue
            state = self.partitions.get(msg.partition() or 0)
            run_id = item[1].get("run_id")
            if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_ID:
                continue
            if state is not None and run_id not in state.runs:
                wanted[run_id] = None
        if not wanted:
            return
        started = time.perf_counter()
        outcome = "unavailable"
        try:
            self._in_history = self.history.known(list(wanted))
            outcome = "ok"
        except HistoryUnavailable as exc:
            if not isinstance(exc, HistoryPaused):
                log.warning(
                    "run history unavailable: new runs are deduplicated against router memory only",
                    extra={"error": bounded_text(str(exc), 500), "runs": len(wanted)},
                )
        finally:
            metrics.ROUTER_HISTORY_LOOKUPS.labels("known", outcome).inc()
            metrics.ROUTER_HISTORY_LOOKUP_SECONDS.labels("known").observe(time.perf_counter() - started)

    def tick(self, out: Outbox) -> None:
        self._begin(out)
        now = self.now_ms()
        for state in list(self.partitions.values()):
            for timer in state.timers.pop_due(now):
                self._contained(self._fire, state, timer, out)
                self._contained(self._admit_wanted, out)
            self._contained(self._expire, state, now, out)
        self._contained(self._end_untrusted, now, out)
        self._contained(self._admit_wanted, out)
        self._flush_dirty(out)

    def _contained(self, work: Callable[..., None], *args: Any) -> None:
        """Run one unit of tick work; its failure is logged, and the next unit goes on."""
        try:
            work(*args)
        except (KafkaException, OutboxFailure):
            raise
        except Exception:
            log.exception("router tick work failed", extra={"work": getattr(work, "__name__", "")})

    def _fire(self, state: PartitionState, timer: Timer, out: Outbox) -> None:
        run = state.runs.get(timer.run_id)
        if run is None or run.status.terminal:
            return
        self.store.touch(state, run.run_id, run.tenant)  # an abort gives the timer back with the run
        workflow = self._workflow(run)
        if workflow is None:  # untrusted now: the trust check ends the run
            return
        compute = partial(
            machine.on_timer,
            run,
            workflow,
            timer,
            self.now_ms(),
            self.rand(),
            deadline_grace_ms=self.settings.deadline_grace_ms,
        )
        self._step(state, run, compute, out)

    # --- inbox records -----------------------------------------------------------------------------
    def _requested(self, state: PartitionState, body: RunRequested, out: Outbox) -> None:
        problem = _request_problem(body)
        if problem is not None:
            raise StepRejected("invalid_request", problem)
        run_id = body["run_id"]
        if run_id in state.runs:
            metrics.TRIGGERS.labels(self._label(body["tenant"]), "duplicate").inc()
            log.info(
                "duplicate run request ignored",
                extra={"tenant": body["tenant"], "run_id": run_id, "correlation_id": body["correlation_id"]},
            )
            return
        known = self._in_history.get(run_id)
        if known is not None:  # it left router memory, but its history holds it: never run it again
            metrics.TRIGGERS.labels(self._label(body["tenant"]), "duplicate").inc()
            finished = f", finished {known.finished_at.isoformat()}" if known.finished_at else ""
            raise StepRejected(
                "duplicate_run",
                f"run {run_id} ({body['workflow']} v{body['version']}) is already in the run history"
                f" ({known.state}{finished}): a trigger with the same idempotency key does not run it"
                " again",
            )
        parent = body.get("parent")
        if parent is not None:  # a sub-workflow's child run, requested by its parent's core
            workflow = subworkflows.resolve(self.catalog, body["tenant"], body["workflow"], body["version"])
            refused = subworkflows.refusal(body, parent, workflow, self._child_bounds(body["tenant"]))
            if refused is not None:
                self._refuse_child(body, parent, *refused, out)
                return
        else:
            workflow = self.catalog.get(body["tenant"], body["workflow"], body["version"])
        if workflow is None:
            raise StepRejected(
                "unknown_definition",
                f"{body['workflow']} v{body['version']} is not a verified definition of "
                f"tenant {body['tenant']}",
            )
        try:
            data = strict_json.loads(body["data_json"], "run request data_json")
        except strict_json.StrictJSONError as exc:
            raise StepRejected(exc.kind, str(exc)) from exc
        self.store.touch(state, run_id, body["tenant"])
        state.arrivals += 1
        run = RunState(
            run_id=run_id,
            tenant=body["tenant"],
            workflow=workflow.name,
            version=workflow.version,
            partition=state.partition,
            correlation_id=body["correlation_id"],
            idempotency_key=body["idempotency_key"],
            # A child's trigger event is its workflow's own (its parent named the workflow, not an event).
            trigger={
                "event": workflow.definition.trigger.event if parent else body["event_type"],
                "data": data,
            },
            arrival=state.arrivals,
            created_ms=self.now_ms(),
            steps=machine.new_run_steps(workflow),
            parent=parent,
        )
        state.runs[run_id] = run
        source = body["source"]
        try:
            try:
                admitted = partial(machine.admitted, run, source)
                self._step(state, run, admitted, out, new=True, rejects=True, write_rejects=True)
            except StepRejected as exc:
                # Its first event cannot be written (the trigger re-encodes too large): a lean one
                # that still names the source, then the failure.
                self._log_run(run, "run request cannot be written; failing the run", exc)
                lean = machine.admitted(run, source, omitted=exc.message).events
                self._fail(state, run, None, exc.kind, exc.message, out, lead=lean)
        except BaseException:
            if run.seq == 0 and state.runs.get(run_id) is run:  # nothing of it was written
                del state.runs[run_id]
            raise
        metrics.RUNS_STARTED.labels(run.tenant, run.workflow).inc()

    def _refuse_child(
        self, body: RunRequested, parent: RunParent, kind: ErrorKind, message: str, out: Outbox
    ) -> None:
        """A child request that starts no run: its parent's step fails with why."""
        result = subworkflows.refused_result(body, parent, kind, message, self.now_ms())
        send(out, subworkflow_records.result_record(result, parent, self.topics.inbox, out.max_record_bytes))
        log.info(
            "child run refused: %s",
            kind,
            extra={
                "tenant": body["tenant"],
                "run_id": parent["run_id"],
                "correlation_id": body["correlation_id"],
            },
        )

    def _result(self, state: PartitionState, body: StepResult, out: Outbox) -> None:
        run = state.runs.get(body["run_id"])
        if run is None:
            metrics.STALE_RESULTS.labels(self._label(body["tenant"]), "unknown_run").inc()
            raise StepRejected("unknown_run", f"result for unknown run {bounded_text(body['run_id'], 256)}")
        if run.tenant != body["tenant"]:
            metrics.STALE_RESULTS.labels(self._label(body["tenant"]), "tenant_mismatch").inc()
            raise StepRejected(
                "tenant_mismatch",
                f"result claims tenant {bounded_text(body['tenant'], 256)!r} for a run of another tenant",
            )
        stale = machine.stale_result(run, body)
        if stale is not None:
            detail = stale.events[0].detail
            reason = str(detail.get("reason", "")) if detail is not None else ""
            metrics.STALE_RESULTS.labels(run.tenant, reason).inc()
            self._step(state, run, lambda: stale, out, rejects=True, write_rejects=True)
            return
        workflow = self._workflow(run)
        if workflow is None:
            raise StepRejected("unknown_definition", "the run's definition is no longer verified")
        compute = partial(
            machine.on_result,
            run,
            workflow,
            body,
            self.now_ms(),
            self.rand(),
            max_run_output_bytes=self.settings.max_run_output_bytes,
            deadline_grace_ms=self.settings.deadline_grace_ms,
            max_context_bytes=self.settings.max_context_bytes,
        )
        self._step(state, run, compute, out, rejects=True)

    def _control(self, state: PartitionState, body: ControlCommand, out: Outbox) -> None:
        """Cancel or replay one run. Every command ends in the run's history (accepted or refused)
        or, when there is no such run of that tenant or its decision cannot be written, in the DLQ —
        never silently dropped."""
        run = state.runs.get(body.get("run_id") or "")
        decided = run.commands if run is not None else {}
        try:
            self._apply_control(state, body, out)
        except StepRejected as exc:
            if run is not None:
                run.commands = decided  # the decision was not written: nor is its command id
            exc.original = serde.encode("ControlCommand", body)  # what the operator sent
            raise
        finally:
            self._shrink_read_back(state, out)

    def _apply_control(self, state: PartitionState, body: ControlCommand, out: Outbox) -> None:
        found = control.take_up(
            self.history,
            body,
            state.runs.get(body.get("run_id") or ""),
            self.catalog.get,
            partition=state.partition,
            arrival=state.arrivals + 1,
            now_ms=self.now_ms,
        )
        run = found.run
        if found.read_back and run is not None:
            self._take_in(state, run)
        if run is None or run.tenant != body["tenant"]:
            raise control.no_such_run(body, run, self.settings, self.history.enabled, found.not_read_back)
        self.store.touch(state, run.run_id, run.tenant)
        compute = control.plan(run, body, self.now_ms(), self.settings, found.not_read_back, self._workflow)
        self._step(state, run, compute, out, rejects=True, write_rejects=True)

    def _event(self, state: PartitionState, body: EventDelivered, out: Outbox) -> None:
        """A tenant event for the partition's waiting runs (:mod:`services.router.event_waits`):
        tried on the oldest ``SWITCHYARD_EVENT_WAIT_CANDIDATES`` waits of its (tenant, type); each
        run it matches moves on in this transaction, so the delivery is applied once."""
        problem = event_waits.delivery_problem(body)
        if problem is not None:
            raise StepRejected("invalid_request", problem)
        try:
            data = strict_json.loads(body["data_json"], "event delivery data_json")
        except strict_json.StrictJSONError as exc:
            raise StepRejected(exc.kind, str(exc)) from exc
        tenant = body["tenant"]
        event = event_waits.WaitEvent(body["event_type"], data, body["key"], body["source"])
        run_ids, over = state.waits.candidates(tenant, event.type, self.settings.event_wait_candidates)
        matched = 0
        budget = event_waits.EVENT_COST_BUDGET
        for tried, run_id in enumerate(run_ids):
            run = state.runs.get(run_id)
            workflow = self._workflow(run) if run is not None else None
            if run is None or workflow is None or run.tenant != tenant:
                continue  # untrusted now: the trust check ends it
            found = event_waits.matching_steps(run, workflow, event, budget)
            budget -= found.cost
            if found.exhausted:
                over += len(run_ids) - tried
            steps = found.steps
            for error in found.errors:
                metrics.EVENT_MATCH_ERRORS.labels(tenant).inc()
                log.warning(
                    "wait_for match failed; the step keeps waiting: %s",
                    error,
                    extra={"tenant": tenant, "run_id": run_id, "correlation_id": run.correlation_id},
                )
            if not steps:
                if found.exhausted:
                    break
                continue
            matched += 1
            compute = partial(
                machine.on_event,
                run,
                workflow,
                steps,
                event,
                self.now_ms(),
                self.rand(),
                max_run_output_bytes=self.settings.max_run_output_bytes,
                deadline_grace_ms=self.settings.deadline_grace_ms,
            )
            try:
                self._step(state, run, compute, out)
            except StepRejected as exc:  # not even its failure could be written: the others go on
                self._log_run(run, "matched wait could not be applied nor failed", exc)
            if found.exhausted:
                break
        self._report_delivery(body, matched, over)

    def _report_delivery(self, body: EventDelivered, matched: int, over: int) -> None:
        """Count one delivery (matched / unmatched, over_cap) and say what was not seen."""
        tenant, label = body["tenant"], self._label(body["tenant"])
        metrics.EVENT_DELIVERIES.labels(label, "matched" if matched else "unmatched").inc()
        identity = {
            "tenant": tenant,
            "event_type": body["event_type"],
            "correlation_id": body["correlation_id"],
        }
        if over:
            metrics.EVENT_DELIVERIES.labels(label, "over_cap").inc()
            log.warning(
                "%d waiting runs did not see the event (past SWITCHYARD_EVENT_WAIT_CANDIDATES or"
                " the cost budget of one event)",
                over,
                extra=identity,
            )
        if not matched:
            log.info(
                "event matched no waiting step (it is not kept; re-send it to the tenant's topic)",
                extra={**identity, "source": body["source"]},
            )

    def _resync_waits(self, runs: list[tuple[int, str]]) -> None:
        """After an abort: the put-back runs wait for what they waited for before it."""
        for number, run_id in runs:
            state = self.partitions.get(number)
            if state is None:
                continue
            run = state.runs.get(run_id)
            if run is None:
                state.waits.drop(run_id)
            else:
                state.waits.sync(run, self._workflow(run))

    # --- runs read back from history -------------------------------------------------------------
    def _take_in(self, state: PartitionState, run: RunState) -> None:
        """Put a run read back from its history for a command into its partition; it leaves memory
        a retention window from now."""
        self.store.touch(state, run.run_id, run.tenant)
        state.arrivals += 1
        state.runs[run.run_id] = run
        assert run.finished_ms is not None
        state.finished.append((run.finished_ms, run.run_id))
        self._read_back.add(run.run_id)
        log.info(
            "run read back from its history",
            extra={"tenant": run.tenant, "run_id": run.run_id, "correlation_id": run.correlation_id},
        )

    def _shrink_read_back(self, state: PartitionState, out: Outbox) -> None:
        """A run read back for a command that did not replay it keeps no replay state in memory
        (its history keeps it), only what dedupe and later commands need."""
        for run_id in self._read_back:
            run = state.runs.get(run_id)
            if run is not None and run.status.terminal and run.compacted is None:
                self._compact(state, run_id, retention.READ_BACK, out)
        self._read_back.clear()

    # --- steps ----------------------------------------------------------------------------------------
    def _step(
        self,
        state: PartitionState,
        run: RunState,
        compute: Callable[[], Effects],
        out: Outbox,
        *,
        new: bool = False,
        rejects: bool = False,
        write_rejects: bool = False,
    ) -> None:
        """Apply one change to ``run`` and write its records, all or nothing.

        If ``compute`` (the machine) raises, the run is rolled back; then with ``rejects`` the
        exception goes to the caller (the inbox record is dead-lettered), else the run fails with
        ``router_error``. If the step's records cannot be written, the run is rolled back; then
        with ``write_rejects`` a :class:`StepRejected` goes to the caller, else the run fails
        with the specific kind (``record_too_large``, ``unencodable``, …)."""
        self.store.touch(state, run.run_id, run.tenant)
        before = None if new else run.status
        mark = run.checkpoint()
        now = self.now_ms()
        try:
            effects = compute()
            if effects.finished:
                run.finished_ms = now
        except Exception as exc:
            run.rollback(mark)
            if rejects:
                raise
            self._log_run(run, "run step failed in the router", exc)
            self._fail(state, run, before, "router_error", describe(exc), out)
            return
        try:
            records, changelog = self._encode(run, effects, now, out)
        except Exception as exc:
            run.rollback(mark)
            kind = error_kind(exc)
            if write_rejects:
                raise StepRejected(kind, describe(exc)) from exc
            self._log_run(run, "run records cannot be written; failing the run", exc)
            self._fail(state, run, before, kind, describe(exc), out)
            return
        self._commit(state, run, before, effects, records, changelog, out)

    def _fail(
        self,
        state: PartitionState,
        run: RunState,
        before: RunStatus | None,
        kind: str,
        message: str,
        out: Outbox,
        lead: Sequence[machine.Event] = (),
    ) -> None:
        """End ``run`` with a small final ``run_failed`` (its open steps cancelled) instead of a
        step that could not be applied or written; ``lead`` events come first."""
        if run.status.terminal:  # a finished run cannot end twice: the input is dead-lettered
            raise StepRejected(kind, message)
        self.store.touch(state, run.run_id, run.tenant)
        mark = run.checkpoint()
        now = self.now_ms()
        try:
            effects = machine.fail_run(run, kind, bounded_text(message, FAILURE_MESSAGE_CHARS))
            effects.events[:0] = lead
            run.finished_ms = now
            records, changelog = self._encode(run, effects, now, out)
        except Exception as exc:
            run.rollback(mark)
            self._log_run(run, "run could not be failed", exc)
            raise StepRejected(
                error_kind(exc), f"{message}; failing the run failed too: {describe(exc)}"
            ) from exc
        self._commit(state, run, before, effects, records, changelog, out)

    def _encode(self, run: RunState, effects: Effects, now: int, out: Outbox) -> tuple[StepRecords, Outgoing]:
        scopes: list[str] = []
        if effects.commands:
            workflow = self._workflow(run)
            scopes = list(workflow.definition.scopes) if workflow else []
        # A child's outcome is read before the step shrinks its state (a succeeded run's outputs go).
        outcome = subworkflows.outcome(run, now) if effects.finished else None
        limit = out.max_record_bytes
        records, changelog = self.mapper.step(run, effects, scopes, now, limit)
        if effects.children:
            inbox = self.topics.inbox
            records.records.extend(
                subworkflow_records.child_records(run, effects.children, now, inbox, self._place, limit)
            )
        if outcome is not None and run.parent is not None:
            records.records.append(
                subworkflow_records.result_record(outcome, run.parent, self.topics.inbox, limit)
            )
        return records, changelog

    def _commit(
        self,
        state: PartitionState,
        run: RunState,
        before: RunStatus | None,
        effects: Effects,
        records: StepRecords,
        changelog: Outgoing,
        out: Outbox,
    ) -> None:
        for record in records.records:
            send(out, record)
        self.store.write(run.run_id, changelog)
        for event in effects.events:
            if event.type == "step_retrying" or (
                event.type == "step_timed_out" and event.state == "retrying"
            ):
                metrics.STEP_RETRIES.labels(run.tenant, run.workflow).inc()
        for dead in effects.dead_letters:
            metrics.DLQ_RECORDS.labels(SERVICE, dead["error_kind"], run.tenant).inc()
        if run.status.terminal:
            state.timers.drop_run(run.run_id)
            state.waits.drop(run.run_id)
        else:
            for timer in effects.timers:
                state.timers.add(timer)
            state.timers.keep(run.run_id, partial(machine.timer_is_live, run))
            if run.run_id in state.waits.of_run or any(
                e.type == EventType.STEP_WAITING_FOR_EVENT for e in effects.events
            ):
                state.waits.sync(run, self._workflow(run))
        self._transition(state, run, before, len(changelog.value or b""), out)

    def _transition(
        self, state: PartitionState, run: RunState, before: RunStatus | None, state_bytes: int, out: Outbox
    ) -> None:
        """Bookkeeping of a status change: open runs, retention, slots and the pending queue. A
        queue that may start a run now is noted; ``_admit_wanted`` looks at it once the step is
        done (admission never runs inside a step)."""
        after = run.status
        if not after.terminal and (before is None or before.terminal):  # new, or replayed
            state.opened(run)
            state.replay_budget.discard(run.tenant, run.run_id)
        if after.terminal and (before is None or not before.terminal):
            self._finished(state, run, state_bytes, out)
        if state.admission.moved(run, before, after):
            self._wanted[(state.partition, run.tenant)] = None

    def _finished(self, state: PartitionState, run: RunState, size: int, out: Outbox) -> None:
        state.closed(run)
        if run.finished_ms is not None:
            state.finished.append((run.finished_ms, run.run_id))
        metrics.RUNS_FINISHED.labels(run.tenant, run.workflow, run.status.value).inc()
        if run.compacted is None:
            for victim in state.replay_budget.add(run.tenant, run.run_id, size):
                self._compact(state, victim, retention.BUDGET, out)
        log.info(
            "run %s",
            run.status.value,
            extra={"tenant": run.tenant, "run_id": run.run_id, "correlation_id": run.correlation_id},
        )

    def _compact(self, state: PartitionState, run_id: str, reason: str, out: Outbox) -> None:
        """Shrink a finished run that kept its replay state (no event: its history is unchanged)."""
        run = state.runs.get(run_id)
        if run is None or not run.status.terminal or run.compacted is not None:
            return
        self.store.touch(state, run_id, run.tenant)
        retention.compact(run, reason)
        try:
            self.store.write(run_id, self.mapper.changelog(run, self.now_ms(), out.max_record_bytes))
        except Exception as exc:  # a dedupe record always fits; if not, memory is still freed
            self._log_run(run, "compacted run state cannot be written", exc)

    # --- admission ------------------------------------------------------------------------------------
    def _limits(self, state: PartitionState, run: RunState) -> tuple[int, int | None] | None:
        """The run's tenant and workflow limits on this partition (None: its definition is not
        trusted now, so it waits for the trust check to end it)."""
        workflow = self._workflow(run)
        if workflow is None:
            return None
        config = self.tenants.get(run.tenant)
        partitions = self.settings.internal_partitions
        slices = max(1, min(config.slices if config else 1, partitions))
        pinned = config.base_partition if config else None
        index = (state.partition - tenant_base(run.tenant, partitions, pinned)) % partitions
        tenant_limit = slice_limit(config.max_concurrent_runs, slices, index) if config else 0
        wf_limit = workflow.definition.concurrency
        return tenant_limit, slice_limit(wf_limit, slices, index) if wf_limit else None

    def _admit_wanted(self, out: Outbox) -> None:
        """Start the pending runs admission decides on, for every queue a step noted. A start
        that ends in a failure frees the slot it was counted in: it notes its queue again."""
        while self._wanted:
            number, tenant = next(iter(self._wanted))
            del self._wanted[(number, tenant)]
            state = self.partitions.get(number)
            if state is None:
                continue
            self.store.touch_queue(state, tenant)
            for run in state.admission.decide(tenant, state.runs, partial(self._limits, state)):
                workflow = self._workflow(run)
                if workflow is None:  # lost its trust since the decision: the trust check ends it
                    continue
                try:
                    start = partial(
                        machine.start,
                        run,
                        workflow,
                        self.now_ms(),
                        deadline_grace_ms=self.settings.deadline_grace_ms,
                    )
                    self._step(state, run, start, out)
                except StepRejected as exc:  # not even a failure could be written: leave it, loudly
                    self._log_run(run, "pending run could not be started nor failed", exc)

    # --- definitions that lost their trust -----------------------------------------------------------
    def _end_untrusted(self, now: int, out: Outbox) -> None:
        """Fail the open runs (pending or active) of definitions that are no longer trusted (key
        expired or revoked, definition removed), a bounded number per tick; their slots free."""
        if now < self._next_trust_check_ms:
            return
        budget = UNTRUSTED_PER_TICK
        for state in list(self.partitions.values()):
            for (tenant, name, version), run_ids in list(state.open_runs.items()):
                if budget <= 0:
                    break
                reason = self.catalog.untrusted_reason(tenant, name, version)
                if reason is None:
                    continue
                for run_id in list(run_ids)[:budget]:
                    run = state.runs.get(run_id)
                    if run is None or run.status.terminal:
                        run_ids.pop(run_id, None)
                        continue
                    budget -= 1
                    message = f"{name} v{version} is no longer trusted: {reason}"
                    self._contained(self._fail, state, run, run.status, "definition_untrusted", message, out)
        self._next_trust_check_ms = now if budget <= 0 else now + TRUST_CHECK_INTERVAL_MS

    # --- retention --------------------------------------------------------------------------------------
    def _expire(self, state: PartitionState, now: int, out: Outbox) -> None:
        for tombstone in self.store.expire(state, now, self.retention_ms):
            send(out, tombstone)

    def _flush_dirty(self, out: Outbox) -> None:
        """Write the state record of every run changed since the last flush: one per run, however
        often it changed."""
        if not self.store.dirty:
            return
        for record in self.store.take_dirty():
            send(out, record)
        metrics.ROUTER_STATE_RUNS.set(self.store.run_count)
        self._publish_gauges()

    # --- helpers -------------------------------------------------------------------------------------------
    def _workflow(self, run: RunState) -> CompiledWorkflow | None:
        return self.catalog.get(run.tenant, run.workflow, run.version)

    def _child_bounds(self, tenant: str) -> subworkflows.Bounds:
        config = self.tenants.get(tenant)
        return subworkflows.Bounds(
            max_depth=self.settings.max_subworkflow_depth,
            max_data_bytes=self.settings.max_trigger_bytes,
            pending=sum(len(p.admission.pending.get(tenant, ())) for p in self.partitions.values()),
            max_pending=config.max_pending_runs if config is not None else 0,
        )

    def _slices(self, tenant: str) -> tuple[int, int | None] | None:
        """A tenant's slices and pinned base partition (None: not registered)."""
        config = self.tenants.get(tenant)
        return None if config is None else (config.slices, config.base_partition)

    def _label(self, tenant: object) -> str:
        """The metrics label of a tenant an input names (one shared value for unregistered names)."""
        if not isinstance(tenant, str):
            return ""
        return metrics.tenant_label(tenant, bool(tenant) and self.tenants.get(tenant) is not None)

    def _log_run(self, run: RunState, what: str, exc: BaseException) -> None:
        log.error(
            "%s: %s",
            what,
            describe(exc),
            exc_info=not isinstance(exc, RecordTooLarge | strict_json.StrictJSONError | StepRejected),
            extra={"tenant": run.tenant, "run_id": run.run_id, "correlation_id": run.correlation_id},
        )

    def _dead_message(
        self,
        msg: Message,
        out: Outbox,
        kind: str,
        message: str,
        tenant: object = None,
        original: bytes | None = None,
    ) -> None:
        """Dead-letter an inbox record; ``original`` replaces its value (e.g. the bare ControlCommand,
        so the audit trail holds what the operator sent rather than the inbox envelope). Always
        producible: the copy of the original is dropped if even its bounded form does not fit."""
        claimed = tenant if isinstance(tenant, str) else None
        label = self._label(claimed)
        tenant_field, _, _ = bounded_identity(claimed)
        limit = out.max_record_bytes
        common: _DeadLetterOrigin = {
            "topic": msg.topic(),
            "partition": msg.partition(),
            "offset": msg.offset(),
            "tenant": tenant_field,
            "max_bytes": limit,
        }
        value = original if original is not None else msg.value()
        try:
            letter = encode_dead_letter(
                SERVICE, kind, message, self.now_ms(), key=msg.key(), value=value, **common
            )
            record = checked(Outgoing(self.topics.dlq, letter, tenant_field), limit)
        except Exception as exc:
            note = f"{message} (copy of the original omitted: {describe(exc)})"
            letter = encode_dead_letter(SERVICE, kind, note, self.now_ms(), **common)
            record = Outgoing(self.topics.dlq, letter, tenant_field)
        send(out, record)
        metrics.DLQ_RECORDS.labels(SERVICE, kind, label).inc()
        log.warning(
            "inbox record dead-lettered: %s",
            bounded_text(message, 1000),
            extra={"tenant": tenant_field, "error_kind": kind},
        )

    def poison(self, msg: Message, out: Outbox, error_kind: str, message: str) -> None:
        """The loop's poison-batch guard isolated ``msg`` (its batch kept failing): dead-letter it.
        The per-record containment above should leave nothing for the guard; this is its hook."""
        tenant: object = None
        try:
            tenant = decode_inbox(msg.value())[1].get("tenant")
        except Exception:  # undecodable: no tenant to name
            tenant = None
        self._dead_message(msg, out, error_kind, message, tenant)

    def _publish_gauges(self) -> None:
        running: dict[str, int] = {}
        pending: dict[str, int] = {}
        for state in self.partitions.values():
            for tenant, count in state.admission.active_by_tenant.items():
                running[tenant] = running.get(tenant, 0) + count
            for tenant, queue in state.admission.pending.items():
                pending[tenant] = pending.get(tenant, 0) + len(queue)
        for tenant, count in running.items():
            metrics.RUNS_IN_FLIGHT.labels(tenant).set(count)
        for tenant, count in pending.items():
            metrics.RUNS_PENDING.labels(tenant).set(count)
        self.load.set_pending(pending)
