"""Router intake: tenant triggers and operator control commands → the router core's inbox.

The tenant of a trigger is the topic it arrived on, never a field of the payload. Intake checks
the size and shape of the record, that the tenant exists and is active, matches the tenant's
verified workflows, derives a deterministic run id from the idempotency key and forwards one
`RunRequested` per matching workflow to the inbox partition that owns the run. Anything it
cannot accept goes to the dead-letter topic with a specific reason — nothing is dropped silently.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Message, TopicPartition

from services.bus.clients import headers_for
from services.bus.placement import partition_for
from services.bus.topics import Topics
from services.bus.txloop import Outbox
from services.config import Settings
from services.contracts import serde
from services.observability import metrics
from services.registry.compacted import CompactedTable
from services.registry.definitions import DefinitionCatalog
from services.router import records
from services.router.triggers import TriggerError, parse_trigger
from services.tenancy.config import TenantConfig
from services.workflow.expressions import ExpressionError

log = logging.getLogger(__name__)
SERVICE = "router.intake"


class IntakeProcessor:
    def __init__(
        self,
        settings: Settings,
        catalog: DefinitionCatalog,
        tenants: CompactedTable[TenantConfig],
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.catalog = catalog
        self.tenants = tenants

    def on_assigned(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_revoked(self, partitions: list[TopicPartition]) -> None:
        pass

    def on_abort(self) -> None:
        pass  # intake keeps no state that a batch changes

    def tick(self, out: Outbox) -> None:
        pass

    def process(self, messages: Sequence[Message], out: Outbox) -> None:
        for msg in messages:
            if msg.topic() == self.topics.control:
                self._control(msg, out)
            else:
                self._trigger(msg, out)

    # --- triggers ----------------------------------------------------------------------------------
    def _dead(self, msg: Message, out: Outbox, kind: str, message: str, tenant: str | None = None) -> None:
        now = int(time.time() * 1000)
        out.send(
            self.topics.dlq,
            records.dead_letter(
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
        metrics.TRIGGERS.labels(tenant or "", "rejected").inc()
        log.warning(
            "trigger dead-lettered: %s",
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
        size = len(value or b"")
        if size > self.settings.max_trigger_bytes:
            self._dead(
                msg,
                out,
                "oversized",
                f"trigger is {size} bytes; the limit is {self.settings.max_trigger_bytes}",
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
                "data_json": serde_json(trigger.data),
                "idempotency_key": key,
                "correlation_id": correlation_id,
                "requested_at": int(time.time() * 1000),
                "source": f"{msg.topic()}/{msg.partition()}/{msg.offset()}",
            }
            out.send(
                self.topics.inbox,
                serde.encode_inbox("RunRequested", request),
                key=run_id,
                partition=partition_for(tenant_id, run_id, self.settings.internal_partitions, tenant.slices),
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
        if tenant is None:
            self._dead(
                msg, out, "unknown_tenant", f"control command for unknown tenant {tenant_id!r}", tenant_id
            )
            return
        run_id = command.get("run_id")
        if not run_id:
            self._dead(msg, out, "unsupported_control", f"{command['kind']} needs a run_id", tenant_id)
            return
        out.send(
            self.topics.inbox,
            serde.encode_inbox("ControlCommand", command),
            key=run_id,
            partition=partition_for(tenant_id, run_id, self.settings.internal_partitions, tenant.slices),
            headers=headers_for(tenant_id, run_id, command["correlation_id"]),
        )


def serde_json(value: object) -> str:
    import json

    return json.dumps(value, separators=(",", ":"))
