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
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from services.bus.clients import headers_for
from services.bus.placement import partition_for
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.contracts.dead_letters import encode_dead_letter
from services.observability import metrics
from services.registry.compacted import CompactedTable
from services.registry.definitions import DefinitionCatalog
from services.router import records
from services.router.load import TenantLoad
from services.router.triggers import TriggerError, parse_trigger
from services.tenancy.config import TenantConfig
from services.tenancy.limits import TokenBucket
from services.workflow.expressions import ExpressionError

log = logging.getLogger(__name__)
SERVICE = "router.intake"


class IntakeProcessor:
    def __init__(
        self,
        settings: Settings,
        catalog: DefinitionCatalog,
        tenants: CompactedTable[TenantConfig],
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
            # Resume with a tenth of a second of tokens, not one: a resume costs a fetch round trip,
            # and resuming per token would cap the tenant far below its rate.
            if reason == "pending" or bucket.available(now, min(bucket.burst, max(1.0, bucket.rate / 2))):
                self._unpause(tenant, resume=True)

    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        held: dict[tuple[str, int], int] = {}  # partition -> first offset left in the topic
        held_tenants: set[str] = set()
        now = self.clock()
        for msg in messages:
            topic, partition = msg.topic() or "", msg.partition() or 0
            if topic == self.topics.control:
                self._control(msg, out)
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
            self._trigger(msg, out)
        for (topic, partition), offset in held.items():
            self._seek(topic, partition, offset)
            out.commit_position(topic, partition, offset)
        for tenant_id in held_tenants:
            self._pause(tenant_id)

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

    # --- triggers ----------------------------------------------------------------------------------
    def _dead(self, msg: Message, out: Outbox, kind: str, message: str, tenant: str | None = None) -> None:
        now = int(time.time() * 1000)
        out.send(
            self.topics.dlq,
            encode_dead_letter(
                SERVICE,
                kind,
                message,
                now,
                topic=msg.topic(),
                partition=msg.partition(),
                offset=msg.offset(),
                key=msg.key(),
                value=msg.value(),
                tenant=tenant,
            ),
            key=tenant,
            headers=headers_for(tenant, None, None),
        )
        metrics.DLQ_RECORDS.labels(SERVICE, kind, tenant or "").inc()
        if msg.topic() != self.topics.control:
            metrics.TRIGGERS.labels(tenant or "", "rejected").inc()
        log.warning(
            "record dead-lettered: %s",
            message,
            extra={"tenant": tenant, "error_kind": kind, "offset": msg.offset()},
        )

    def _trigger(self, msg: Message, out: Outbox) -> None:
        started = time.perf_counter()
        tenant_id = self.topics.tenant_of(msg.topic() or "")
        if tenant_id is None:
            self._dead(msg, out, "bad_topic", f"{msg.topic()} is not a tenant trigger topic")
            return
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            self._dead(msg, out, "unknown_tenant", f"tenant {tenant_id!r} is not registered", tenant_id)
            return
        if tenant.status != "active":
            self._dead(msg, out, "tenant_suspended", f"tenant {tenant_id!r} is suspended", tenant_id)
            return
        value = msg.value()
        size = _record_size(msg)
        if size > self.settings.max_trigger_bytes:
            self._dead(
                msg,
                out,
                "oversized",
                f"trigger is {size} bytes (value, key and headers); the limit is "
                f"{self.settings.max_trigger_bytes}",
                tenant_id,
            )
            return
        try:
            trigger = parse_trigger(value)
        except TriggerError as exc:
            self._dead(msg, out, exc.kind, str(exc), tenant_id)
            return
        key = trigger.idempotency_key
        if key is None:
            raw_key = msg.key()
            key = (
                raw_key.decode(errors="replace")
                if raw_key
                else f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
            )
        correlation_id = trigger.correlation_id or str(
            uuid.uuid5(records.RUN_NAMESPACE, f"{tenant_id}\x1f{key}")
        )
        ctx = {"event": trigger.event_type, "data": trigger.data, "key": key, "tenant": tenant_id}
        matched = 0
        for workflow in self.catalog.latest_for(tenant_id):
            try:
                if not workflow.matches(ctx):
                    continue
            except ExpressionError as exc:
                log.warning(
                    "trigger filter failed: %s",
                    exc,
                    extra={"tenant": tenant_id, "workflow": workflow.name, "correlation_id": correlation_id},
                )
                continue
            matched += 1
            run_id = records.run_id_for(tenant_id, workflow.name, key)
            request = {
                "run_id": run_id,
                "tenant": tenant_id,
                "workflow": workflow.name,
                "version": workflow.version,
                "event_type": trigger.event_type,
                "data_json": json.dumps(trigger.data, separators=(",", ":")),
                "idempotency_key": key,
                "correlation_id": correlation_id,
                "requested_at": int(time.time() * 1000),
                "source": f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
            }
            out.send(
                self.topics.inbox,
                serde.encode_inbox("RunRequested", request),
                key=run_id,
                partition=partition_for(
                    tenant_id, run_id, self.settings.internal_partitions, tenant.slices, tenant.base_partition
                ),
                headers=headers_for(tenant_id, run_id, correlation_id),
            )
            log.info(
                "run requested",
                extra={
                    "tenant": tenant_id,
                    "run_id": run_id,
                    "correlation_id": correlation_id,
                    "workflow": workflow.name,
                },
            )
        metrics.TRIGGERS.labels(tenant_id, "matched" if matched else "unmatched").inc()
        if not matched:
            log.info(
                "trigger matched no workflow",
                extra={
                    "tenant": tenant_id,
                    "correlation_id": correlation_id,
                    "event_type": trigger.event_type,
                },
            )
        metrics.HANDLER_SECONDS.labels(SERVICE, "trigger", tenant_id).observe(time.perf_counter() - started)

    # --- control -----------------------------------------------------------------------------------
    def _control(self, msg: Message, out: Outbox) -> None:
        try:
            _, command = serde.decode(msg.value(), expected="ControlCommand")
        except serde.ContractError as exc:
            self._dead(msg, out, exc.kind, f"control command: {exc.message}")
            return
        tenant_id = command["tenant"]
        tenant = self.tenants.get(tenant_id)
        who = f"{command['kind']} by {command['requester']!r}"
        refusal: str | None = None
        if tenant is None:
            refusal = f"{who}: tenant {tenant_id!r} is not registered"
        elif (
            command["requester"] not in tenant.operators
            and command["requester"] not in self.settings.global_operators
        ):
            refusal = (
                f"{who}: not an operator of tenant {tenant_id!r} (see `switchyard tenant update --operator`)"
            )
        elif command["kind"] == "replay_bulk":
            refusal = (
                f"{who}: bulk replays are expanded into one command per run by `switchyard replay --tenant`"
            )
        elif not command.get("run_id"):
            refusal = f"{who}: the command names no run"
        if refusal is not None or tenant is None:
            self._dead(msg, out, "control_refused", refusal or who, tenant_id)
            return
        run_id = command["run_id"]
        out.send(
            self.topics.inbox,
            serde.encode_inbox("ControlCommand", command),
            key=run_id,
            partition=partition_for(
                tenant_id, run_id, self.settings.internal_partitions, tenant.slices, tenant.base_partition
            ),
            headers=headers_for(tenant_id, run_id, command["correlation_id"]),
        )


def _record_size(msg: Message) -> int:
    """Bytes of a record as the size limit counts them: value, key and every header (name and value).

    Headers and key count too: otherwise a record far over the limit passes as long as its bulk
    rides in its headers (or in a Kafka key that becomes the idempotency key)."""
    size = len(msg.value() or b"") + len(msg.key() or b"")
    raw = msg.headers() or []
    for name, header in list(raw.items()) if isinstance(raw, dict) else raw:
        size += len(name.encode()) + len(header if isinstance(header, bytes | str) else b"")
    return size
