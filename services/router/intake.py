"""Router intake: tenant triggers and operator control commands → the router core's inbox.

The tenant of a trigger is the topic it arrived on, never a field of the payload. Intake checks
the size and shape of the record, that the tenant exists and is active, matches the tenant's
verified workflows, derives a deterministic run id from the idempotency key and forwards one
`RunRequested` per matching workflow to the inbox partition that owns the run. Anything it
cannot accept goes to the dead-letter topic with a specific reason — nothing is dropped silently.

Backpressure: each tenant has a token bucket (its trigger rate and burst, scaled by the share of
its trigger partitions this instance owns, so several router instances add up to the limit).
When a tenant is out of tokens, or its pending runs exceed its bound, intake seeks the tenant's
partitions back to the first record it did not take, commits that position and *pauses* them:
the backlog waits in the tenant's own topic, costs no memory here, and no other tenant's
partitions are touched. ``tick`` resumes them once a token is back and the queue is under the
bound. Control commands are never paused (nor are step results, which go to the core).

Total: :meth:`IntakeProcessor.process` never raises for one record. Whatever a record does while
it is decoded, filtered, turned into ids or encoded, it ends in a bounded dead letter with a
specific ``error_kind`` (``intake_error`` for what nothing else names) and the loop goes on; only
Kafka errors of the transaction itself reach the loop. What intake writes is checked as encoded
bytes before anything is sent: a trigger whose run request would not fit (its data re-encodes
larger than it arrived) is dead-lettered ``oversized`` before any run exists, so a re-send gets
the same answer rather than being taken for a duplicate of a lost run.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.bus.clients import headers_for
from services.bus.placement import partition_for, tenant_partitions
from services.bus.record_budget import RecordTooLarge, record_size
from services.bus.topics import TENANT_ID, Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.contracts.dead_letters import bounded_identity, encode_dead_letter
from services.contracts.records import EventDelivered, RunRequested, decode_control_command
from services.contracts.text import bounded_text
from services.contracts.vocabulary import ErrorKind
from services.control.acceptance import accept, foreign_operator_key
from services.control.plausibility import implausible
from services.observability import metrics
from services.router import records
from services.router.event_waits import waited_event_types
from services.router.load import TenantLoad
from services.router.state import TriggerView
from services.router.trigger_records import MAX_ID_LENGTH, Trigger, TriggerError, parse_trigger
from services.tenancy.config import TenantConfig
from services.tenancy.limits import TokenBucket
from services.workflow.compiled import CompiledWorkflow
from services.workflow.expressions import ExpressionError

log = logging.getLogger(__name__)
SERVICE = "router.intake"

#: Room a run request needs besides the trigger's data: run id, tenant, workflow, event type,
#: idempotency key and correlation id (each bounded), source, Avro framing, identity headers.
RUN_REQUEST_ENVELOPE = 8 * 1024
#: Prefix of an idempotency key derived from a Kafka key that is not usable as it is.
HASHED_KEY_PREFIX = "sha256:"


class TenantDirectory(Protocol):
    def get(self, key: str) -> TenantConfig | None: ...


class WorkflowDirectory(Protocol):
    def latest_for(self, tenant: str) -> list[CompiledWorkflow]: ...


@dataclass(frozen=True)
class _Request:
    run_id: str
    workflow: str
    value: bytes
    partition: int
    headers: list[tuple[str, str | bytes | None]]
    size: int  # what the record costs downstream (its data re-encoded), in bytes


class IntakeProcessor:
    def __init__(
        self,
        settings: Settings,
        catalog: WorkflowDirectory,
        tenants: TenantDirectory,
        load: TenantLoad | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.catalog = catalog
        self.tenants = tenants
        self.load = load or TenantLoad()
        self.clock = clock
        self.consumer: Consumer | None = None
        self.owned: dict[str, set[int]] = {}  # tenant -> trigger partitions this instance owns
        self.buckets: dict[str, TokenBucket] = {}
        self.paused: dict[str, tuple[float, str]] = {}  # tenant -> (since, reason)

    def bind(self, consumer: Consumer) -> None:
        self.consumer = consumer

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tenant = self.topics.tenant_of(tp.topic)
            if tenant is not None:
                self.owned.setdefault(tenant, set()).add(tp.partition)

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            tenant = self.topics.tenant_of(tp.topic)
            if tenant is not None and tenant in self.owned:
                self.owned[tenant].discard(tp.partition)
                if not self.owned[tenant]:
                    del self.owned[tenant]
                    self._unpause(tenant, resume=False)

    def on_abort(self) -> None:
        pass  # the loop rewinds to the committed offsets; pauses and buckets stay valid

    def tick(self, out: Outbox) -> None:
        now = self.clock()
        for tenant, (_, reason) in list(self.paused.items()):
            config = self.tenants.get(tenant)
            if config is None or self._over_pending(tenant, config):
                continue
            bucket = self._bucket(tenant, config, now)
            # Resume with half a second of tokens (at least one, at most the burst), not one: a resume
            # costs a fetch round trip, and resuming per token would cap the tenant far below its rate.
            if reason == "pending" or bucket.available(now, min(bucket.burst, max(1.0, bucket.rate / 2))):
                self._unpause(tenant, resume=True)

    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        held: dict[tuple[str, int], int] = {}  # partition -> first offset left in the topic
        held_tenants: set[str] = set()
        now = self.clock()
        for msg in messages:
            topic, partition = msg.topic() or "", msg.partition() or 0
            if topic == self.topics.control:
                self._guarded(self._control, msg, out)
                continue
            tenant_id = self.topics.tenant_of(topic)
            if tenant_id is not None and (tenant_id in held_tenants or tenant_id in self.paused):
                held.setdefault((topic, partition), msg.offset() or 0)
                continue
            config = self.tenants.get(tenant_id) if tenant_id else None
            if tenant_id is not None and config is not None and config.status == "active":
                reason = self._throttle_reason(tenant_id, config, now)
                if reason is not None:
                    held_tenants.add(tenant_id)
                    held.setdefault((topic, partition), msg.offset() or 0)
                    self.paused[tenant_id] = (now, reason)
                    continue
            self._guarded(self._trigger, msg, out)
        for (topic, partition), offset in held.items():
            self._seek(topic, partition, offset)
            out.commit_position(topic, partition, offset)
        for tenant_id in held_tenants:
            self._pause(tenant_id)

    def poison(self, msg: Message, out: Outbox, kind: str, message: str) -> None:
        """Dead-letter one record whatever it is: the transactional loop's hook for a record it
        isolated as the cause of a failing batch (services.bus.poison)."""
        tenant = self.topics.tenant_of(msg.topic() or "")
        if not self._dead(msg, out, kind, message, tenant, trigger=msg.topic() != self.topics.control):
            raise RuntimeError("the dead letter could not be written")  # the loop writes its own

    # --- totality -----------------------------------------------------------------------------------
    def _guarded(self, handle: Callable[[Message, Outbox], None], msg: Message, out: Outbox) -> None:
        """Handle one record; anything it raises (but the transaction's own Kafka errors) becomes
        an ``intake_error`` dead letter of that record."""
        try:
            handle(msg, out)
        except KafkaException:
            raise  # the producer or the transaction failed: the loop aborts and rewinds
        except Exception as exc:
            log.exception(
                "intake failed on a record",
                extra={"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset()},
            )
            tenant = self.topics.tenant_of(msg.topic() or "")
            self._dead(
                msg,
                out,
                ErrorKind.INTAKE_ERROR,
                f"{type(exc).__name__}: {exc}",
                tenant,
                trigger=msg.topic() != self.topics.control,
            )

    # --- backpressure ------------------------------------------------------------------------------
    def _bucket(self, tenant: str, config: TenantConfig, now: float) -> TokenBucket:
        share = len(self.owned.get(tenant, ())) / max(1, config.trigger_partitions) or 1.0
        rate, burst = config.trigger_rate * share, max(1.0, config.trigger_burst * share)
        bucket = self.buckets.get(tenant)
        if bucket is None:
            bucket = self.buckets[tenant] = TokenBucket.full(rate, burst, now)
        elif (bucket.rate, bucket.burst) != (rate, burst):
            bucket.reconfigure(rate, burst)
        return bucket

    def _over_pending(self, tenant: str, config: TenantConfig) -> bool:
        return self.load.pending(tenant) >= config.max_pending_runs

    def _throttle_reason(self, tenant: str, config: TenantConfig, now: float) -> str | None:
        if self._over_pending(tenant, config):
            return "pending"
        if not self._bucket(tenant, config, now).try_take(now):
            return "rate"
        return None

    def _tenant_partitions(self, tenant: str) -> list[TopicPartition]:
        topic = self.topics.tenant_triggers(tenant)
        return [TopicPartition(topic, p) for p in sorted(self.owned.get(tenant, ()))]

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        if self.consumer is not None:
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                log.warning("seek failed", extra={"topic": topic, "partition": partition, "error": str(exc)})

    def _pause(self, tenant: str) -> None:
        if self.consumer is not None and self.owned.get(tenant):
            self.consumer.pause(self._tenant_partitions(tenant))
        log.info(
            "tenant throttled: trigger partitions paused",
            extra={"tenant": tenant, "reason": self.paused.get(tenant, (0, ""))[1]},
        )

    def _unpause(self, tenant: str, resume: bool) -> None:
        since, reason = self.paused.pop(tenant, (None, ""))
        if since is None:
            return
        metrics.THROTTLED_SECONDS.labels(tenant, reason).inc(max(0.0, self.clock() - since))
        if resume and self.consumer is not None and self.owned.get(tenant):
            self.consumer.resume(self._tenant_partitions(tenant))
            log.info("tenant resumed", extra={"tenant": tenant})

    # --- dead letters ---------------------------------------------------------------------------------
    def _dead(
        self,
        msg: Message,
        out: Outbox,
        kind: str,
        message: str,
        tenant: str | None = None,
        *,
        trigger: bool = True,
        correlation_id: str | None = None,
    ) -> bool:
        """One bounded dead letter for ``msg``; should that fail (it fits the record budget by
        construction), one without the copy of the original. False if neither could be written."""
        tenant, _, correlation_id = bounded_identity(tenant, None, correlation_id)
        registered = tenant is not None and self.tenants.get(tenant) is not None
        label = metrics.tenant_label(tenant, registered)
        for keep_original in (True, False):
            try:
                out.send(
                    self.topics.dlq,
                    encode_dead_letter(
                        SERVICE,
                        kind,
                        message if keep_original else f"{message} (original not kept: it did not fit)",
                        int(time.time() * 1000),
                        topic=msg.topic(),
                        partition=msg.partition(),
                        offset=msg.offset(),
                        key=msg.key() if keep_original else None,
                        value=msg.value() if keep_original else None,
                        tenant=tenant,
                        correlation_id=correlation_id,
                        max_bytes=out.max_record_bytes,
                    ),
                    key=tenant,
                    headers=headers_for(tenant, None, correlation_id),
                )
                break
            except KafkaException:
                raise
            except Exception:
                if keep_original:
                    continue
                log.exception(
                    "dead letter could not be written",
                    extra={"tenant": tenant, "error_kind": kind, "offset": msg.offset()},
                )
                return False
        metrics.DLQ_RECORDS.labels(SERVICE, kind, label).inc()
        if trigger:
            metrics.TRIGGERS.labels(label, "rejected").inc()
        log.warning(
            "record dead-lettered: %s",
            bounded_text(message, 1000),
            extra={"tenant": tenant, "error_kind": kind, "offset": msg.offset()},
        )
        return True

    # --- triggers ----------------------------------------------------------------------------------
    def _trigger(self, msg: Message, out: Outbox) -> None:
        """One tenant trigger: checked, matched, and a run requested per matching workflow (or
        dead-lettered with the reason)."""
        started = time.perf_counter()
        admitted = self._trigger_tenant(msg, out)
        if admitted is None:
            return
        tenant_id, tenant = admitted
        size = self._trigger_size(msg, out, tenant_id)
        if size is None:
            return
        try:
            trigger = parse_trigger(msg.value())
        except TriggerError as exc:
            self._dead(msg, out, exc.kind, str(exc), tenant_id)
            return
        key = trigger.idempotency_key or _key_from_record(msg)
        correlation_id = trigger.correlation_id or str(
            uuid.uuid5(records.RUN_NAMESPACE, f"{tenant_id}\x1f{key}")
        )
        planned = self._plan_requests(msg, out, tenant_id, tenant, trigger, key, correlation_id, size)
        if planned is None:
            return
        requests, failures = planned
        sent = self._send_requests(msg, out, requests, tenant_id, correlation_id)
        if sent is None:
            return
        self._forward_event(msg, out, tenant, trigger, key, correlation_id)
        self._report_trigger(msg, out, trigger, tenant_id, correlation_id, sent, failures)
        metrics.HANDLER_SECONDS.labels(SERVICE, "trigger", tenant_id).observe(time.perf_counter() - started)

    def _trigger_tenant(self, msg: Message, out: Outbox) -> tuple[str, TenantConfig] | None:
        """The registered, active tenant whose topic ``msg`` came from; else ``None``, dead-lettered."""
        tenant_id = self.topics.tenant_of(msg.topic() or "")
        if tenant_id is None:
            self._dead(
                msg,
                out,
                ErrorKind.BAD_TOPIC,
                f"{bounded_text(msg.topic() or '', 300)} is not a tenant trigger topic",
            )
            return None
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            self._dead(
                msg, out, ErrorKind.UNKNOWN_TENANT, f"tenant {tenant_id!r} is not registered", tenant_id
            )
            return None
        if tenant.status != "active":
            self._dead(msg, out, ErrorKind.TENANT_SUSPENDED, f"tenant {tenant_id!r} is suspended", tenant_id)
            return None
        return tenant_id, tenant

    def _trigger_size(self, msg: Message, out: Outbox, tenant_id: str) -> int | None:
        """The record's size (value, key and headers) if within ``max_trigger_bytes``; else
        ``None``, dead-lettered."""
        try:
            raw_headers = msg.headers() or []
            headers = list(raw_headers.items()) if isinstance(raw_headers, dict) else raw_headers
            size = record_size(msg.key(), msg.value(), headers)
        except UnicodeDecodeError as exc:  # the client decodes header names as UTF-8
            self._dead(
                msg, out, ErrorKind.INVALID_UTF8, f"a header name is not valid UTF-8: {exc}", tenant_id
            )
            return None
        if size > self.settings.max_trigger_bytes:
            self._dead(
                msg,
                out,
                ErrorKind.OVERSIZED,
                f"trigger is {size} bytes (value, key and headers); the limit is "
                f"{self.settings.max_trigger_bytes}",
                tenant_id,
            )
            return None
        return size

    def _plan_requests(
        self,
        msg: Message,
        out: Outbox,
        tenant_id: str,
        tenant: TenantConfig,
        trigger: Trigger,
        key: str,
        correlation_id: str,
        size: int,
    ) -> tuple[list[_Request], list[str]] | None:
        """The run requests of the workflows the trigger matches, and the filter failures; or
        ``None`` (dead-lettered ``oversized``, no run started) when the data or any request
        would pass the run request budget."""
        budget = self.settings.max_trigger_bytes + RUN_REQUEST_ENVELOPE
        # Data that alone cannot fit is refused before any filter spends time on it.
        matched, failures = self._match(tenant_id, trigger, key) if trigger.data_size <= budget else ([], [])
        requests = [
            self._request(msg, tenant, trigger, workflow, key, correlation_id) for workflow in matched
        ]
        too_large = [r.size for r in requests if r.size > budget]
        if too_large or trigger.data_size > budget:
            request_size = max(too_large) if too_large else f"at least {trigger.data_size}"
            self._dead(
                msg,
                out,
                ErrorKind.OVERSIZED,
                f"trigger data re-encodes to {trigger.data_size} bytes (the trigger was {size} bytes): its "
                f"run request ({request_size} bytes) would "
                f"pass the limit of {budget} (SWITCHYARD_MAX_TRIGGER_BYTES {self.settings.max_trigger_bytes} "
                f"+ {RUN_REQUEST_ENVELOPE} of envelope); no run was started",
                tenant_id,
                correlation_id=correlation_id,
            )
            return None
        return requests, failures

    def _send_requests(
        self, msg: Message, out: Outbox, requests: list[_Request], tenant_id: str, correlation_id: str
    ) -> int | None:
        """Send the run requests to the inbox; how many were sent, or ``None`` (dead-lettered)
        if the outbox refused one as too large."""
        sent = 0
        for request in requests:
            try:
                out.send(
                    self.topics.inbox,
                    request.value,
                    key=request.run_id,
                    partition=request.partition,
                    headers=request.headers,
                )
            except RecordTooLarge as exc:  # not reachable while the budget fits the producer's limit
                started_runs = f"; {_runs_of(sent)} requested" if sent else ""
                self._dead(
                    msg,
                    out,
                    ErrorKind.OVERSIZED,
                    f"run request: {exc}{started_runs}",
                    tenant_id,
                    correlation_id=correlation_id,
                )
                return None
            sent += 1
            log.info(
                "run requested",
                extra={
                    "tenant": tenant_id,
                    "run_id": request.run_id,
                    "correlation_id": correlation_id,
                    "workflow": request.workflow,
                },
            )
        return sent

    def _forward_event(
        self, msg: Message, out: Outbox, tenant: TenantConfig, trigger: Trigger, key: str, correlation_id: str
    ) -> None:
        """An event some ``wait_for`` step of the tenant's trusted definitions waits for goes, as
        well, to each inbox partition of the tenant's slices (where its waiting runs live), in this
        transaction (:mod:`services.router.event_waits`). Others are not forwarded."""
        versions = getattr(self.catalog, "all_for", self.catalog.latest_for)
        if trigger.event_type not in waited_event_types(versions(tenant.tenant)):
            return
        body: EventDelivered = {
            "tenant": tenant.tenant,
            "event_type": trigger.event_type,
            "key": key,
            "data_json": trigger.data_json,
            "source": f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
            "correlation_id": correlation_id,
            "delivered_at": int(time.time() * 1000),
        }
        value = serde.encode_inbox("EventDelivered", body)
        headers = headers_for(tenant.tenant, None, correlation_id)
        partitions = tenant_partitions(
            tenant.tenant, self.settings.internal_partitions, tenant.slices, tenant.base_partition
        )
        try:
            for partition in partitions:
                out.send(self.topics.inbox, value, key=tenant.tenant, partition=partition, headers=headers)
        except RecordTooLarge as exc:  # not reachable while the budget fits the producer's limit
            self._dead(
                msg,
                out,
                ErrorKind.OVERSIZED,
                f"event not delivered to waiting runs: {exc}",
                tenant.tenant,
                trigger=False,
                correlation_id=correlation_id,
            )

    def _report_trigger(
        self,
        msg: Message,
        out: Outbox,
        trigger: Trigger,
        tenant_id: str,
        correlation_id: str,
        sent: int,
        failures: list[str],
    ) -> None:
        """The trigger's outcome: a ``filter_error`` dead letter for the filters that failed, and
        the matched / unmatched count."""
        if failures:
            # One dead letter per trigger (its id is the record's position), naming every workflow
            # whose filter failed; the workflows that matched still run.
            self._dead(
                msg,
                out,
                ErrorKind.FILTER_ERROR,
                "; ".join(failures) + (f" ({_runs_of(sent)} requested)" if sent else ""),
                tenant_id,
                trigger=not sent,
                correlation_id=correlation_id,
            )
        if sent:
            metrics.TRIGGERS.labels(tenant_id, "matched").inc()
        elif not failures:
            metrics.TRIGGERS.labels(tenant_id, "unmatched").inc()
            log.info(
                "trigger matched no workflow",
                extra={
                    "tenant": tenant_id,
                    "correlation_id": correlation_id,
                    "event_type": bounded_text(trigger.event_type, 200),
                },
            )

    def _match(self, tenant_id: str, trigger: Trigger, key: str) -> tuple[list[CompiledWorkflow], list[str]]:
        """The tenant's workflows this trigger starts, and why each failing filter failed.

        A filter that cannot be evaluated (missing key, type error, over its cost budget, or
        anything else the evaluation raises) does not start a run: the trigger is dead-lettered
        ``filter_error`` with the reason, because it was addressed to that workflow (its event
        type matched) and silently not running it would look like success."""
        ctx: TriggerView = {
            "event": trigger.event_type,
            "data": trigger.data,
            "key": key,
            "tenant": tenant_id,
        }
        matched: list[CompiledWorkflow] = []
        failures: list[str] = []
        for workflow in self.catalog.latest_for(tenant_id):
            try:
                if workflow.matches(ctx):
                    matched.append(workflow)
            except Exception as exc:
                reason = str(exc) if isinstance(exc, ExpressionError) else f"{type(exc).__name__}: {exc}"
                reason = bounded_text(reason, 1000)
                failures.append(
                    f"workflow {workflow.name} v{workflow.version}: trigger filter failed: {reason}"
                )
                log.warning(
                    "trigger filter failed",
                    extra={"tenant": tenant_id, "workflow": workflow.name, "error": reason},
                )
        return matched, failures

    def _request(
        self,
        msg: Message,
        tenant: TenantConfig,
        trigger: Trigger,
        workflow: CompiledWorkflow,
        key: str,
        correlation_id: str,
    ) -> _Request:
        run_id = records.run_id_for(tenant.tenant, workflow.name, key)
        body: RunRequested = {
            "run_id": run_id,
            "tenant": tenant.tenant,
            "workflow": workflow.name,
            "version": workflow.version,
            "event_type": trigger.event_type,
            "data_json": trigger.data_json,
            "idempotency_key": key,
            "correlation_id": correlation_id,
            "requested_at": int(time.time() * 1000),
            "source": f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
            "parent": None,
        }
        value = serde.encode_inbox("RunRequested", body)
        headers = headers_for(tenant.tenant, run_id, correlation_id)
        # Downstream the data is re-encoded: count what it will take, not what it took here.
        growth = max(0, trigger.data_size - len(trigger.data_json.encode("utf-8")))
        return _Request(
            run_id,
            workflow.name,
            value,
            partition_for(
                tenant.tenant, run_id, self.settings.internal_partitions, tenant.slices, tenant.base_partition
            ),
            headers,
            record_size(run_id, value, headers) + growth,
        )

    # --- control -----------------------------------------------------------------------------------
    def _control(self, msg: Message, out: Outbox) -> None:
        """One operator command: decoded, checked (:mod:`services.control.plausibility`,
        :mod:`services.control.acceptance`) and forwarded to its run's inbox partition, or
        dead-lettered with the reason."""
        try:
            command = decode_control_command(msg.value())
        except serde.ContractError as exc:
            self._dead(msg, out, exc.kind, f"control command: {exc.message}", trigger=False)
            return
        problem = implausible(command)
        if problem is not None:
            tenant_id = command["tenant"] if TENANT_ID.fullmatch(command["tenant"]) else None
            self._dead(
                msg,
                out,
                ErrorKind.INVALID_FIELD,
                f"control command refused: {problem}",
                tenant_id,
                trigger=False,
            )
            return
        tenant_id, run_id = command["tenant"], command["run_id"]
        tenant = self.tenants.get(tenant_id)
        accepted = accept(
            command,
            tenant,
            self.settings.operator_keys,
            int(time.time() * 1000),
            int(self.settings.control_window_s * 1000),
            foreign_operator_key(getattr(self.tenants, "items", None), tenant_id),
        )
        if isinstance(accepted, str) or tenant is None or not run_id:  # no tenant or run: refused
            self._dead(msg, out, ErrorKind.CONTROL_REFUSED, str(accepted), tenant_id, trigger=False)
            return
        out.send(
            self.topics.inbox,
            serde.encode_inbox("ControlCommand", accepted),
            key=run_id,
            partition=partition_for(
                tenant_id, run_id, self.settings.internal_partitions, tenant.slices, tenant.base_partition
            ),
            headers=headers_for(tenant_id, run_id, accepted["correlation_id"]),
        )


def _key_from_record(msg: Message) -> str:
    """The idempotency key of a trigger that names none: its Kafka key, else its position.

    A Kafka key that is not valid UTF-8, or longer than the 512 characters an ``idempotency_key``
    may have, becomes ``sha256:<hex of its bytes>``: stable (a re-send maps to the same run) and
    bounded (the key lives in run state, ids and every record of the run)."""
    raw = msg.key()
    if not raw:
        return f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
    raw_bytes = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or len(text) > MAX_ID_LENGTH:
        return HASHED_KEY_PREFIX + hashlib.sha256(raw_bytes).hexdigest()
    return text


def _runs_of(count: int) -> str:
    return f"runs of {count} other workflow{'' if count == 1 else 's'} were"
