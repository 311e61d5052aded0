"""Re-drive dead-lettered triggers: send each again to its topic, then write its audit row.

Per chunk of dead letters, in one PostgreSQL transaction:

1. take a transaction-scoped advisory lock per dead letter (sorted, so two operators never
   deadlock), so two re-drives of one dead letter cannot both pass the "already re-driven" check;
2. read the dead letters and their past re-drives again under the locks, and decide each one
   (:func:`~services.dlq.eligibility.refusal`); an original the projector stored cut is read back
   whole from the dead-letter topic (:mod:`~services.dlq.full_copy`);
3. produce the re-drivable ones with an idempotent producer (``acks=all``), never creating a topic
   (a tenant deleted since is a refusal), and wait for each delivery report;
4. insert one ``dead_letter_redrives`` row per *confirmed* record (its topic, partition, offset)
   and commit.

A crash between 3 and 4 leaves a record sent without its audit row: a later re-drive would send it
once more, which intake's idempotency keys make harmless (the same trigger maps to the same runs).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from confluent_kafka import KafkaError, Message, Producer
from sqlalchemy.orm import Session

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.dlq import eligibility
from services.dlq.full_copy import FullCopies
from services.dlq.queries import dead_letters_by_id, redrives_of
from services.projector.bounds import MAX_MESSAGE, MAX_NAME, storable_text
from services.projector.models import DeadLetterRedrive

Status = Literal["redriven", "would_send", "refused", "failed"]
#: Dead letters decided, sent and audited per PostgreSQL transaction.
CHUNK = 200
#: How long the producer keeps trying one record before reporting it failed.
DELIVERY_TIMEOUT_MS = 30_000
_LOCK_NAMESPACE = "switchyard.dlq.redrive:"


@dataclass(frozen=True)
class Outcome:
    """What became of one dead letter in a re-drive (``code`` of a refusal: see eligibility)."""

    dlq_id: str
    status: Status
    reason: str | None = None
    code: str | None = None
    redrive_id: str | None = None
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None
    value_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["key"] = None if self.key is None else self.key.decode("utf-8", "replace")
        return out


@dataclass(frozen=True)
class Request:
    """One re-drive call: who, why, and how (``dry_run``: decide and report, send nothing)."""

    requester: str
    reason: str | None
    again: bool = False
    dry_run: bool = False
    bulk_id: str = ""


TopicCheck = Callable[[Producer, str, str], str]


class Redriver:
    """Re-drives dead letters by id (see the module docstring for the order of things)."""

    def __init__(self, settings: Settings, engine: sa.Engine, topic_check: TopicCheck) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.engine = engine
        self.topic_check = topic_check
        self._producer: Producer | None = None
        self._topic_problems: dict[str, str] = {}
        self._copies = FullCopies(settings)

    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(
                plain_producer_config(
                    self.settings,
                    **{"allow.auto.create.topics": False, "message.timeout.ms": DELIVERY_TIMEOUT_MS},
                )
            )
        return self._producer

    def run(
        self, dlq_ids: Sequence[str], request: Request, advance: Callable[[int], None] = lambda _: None
    ) -> list[Outcome]:
        """Every id's outcome, in the order given (duplicates counted once)."""
        ordered = list(dict.fromkeys(dlq_ids))
        outcomes: dict[str, Outcome] = {}
        for start in range(0, len(ordered), CHUNK):
            chunk = ordered[start : start + CHUNK]
            for outcome in self._chunk(chunk, request):
                outcomes[outcome.dlq_id] = outcome
            advance(len(chunk))
        return [outcomes[dlq_id] for dlq_id in ordered]

    def _chunk(self, dlq_ids: list[str], request: Request) -> list[Outcome]:
        with Session(self.engine) as session, session.begin():
            for dlq_id in sorted(dlq_ids):
                session.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                    {"k": _LOCK_NAMESPACE + dlq_id},
                )
            letters = dead_letters_by_id(session, dlq_ids)
            past = redrives_of(session, list(letters))
            decided: list[Outcome] = []
            to_send: list[eligibility.Outgoing] = []
            for dlq_id in dlq_ids:
                letter = letters.get(dlq_id)
                if letter is None:
                    decided.append(
                        Outcome(
                            dlq_id, "refused", "no such dead letter (is the projector running?)", "unknown"
                        )
                    )
                    continue
                previous = [eligibility.PastRedrive(r.redriven_at, r.requester) for r in past[dlq_id]]
                refused = eligibility.refusal(
                    letter,
                    self.topics,
                    previous,
                    again=request.again,
                    max_trigger_bytes=self.settings.max_trigger_bytes,
                    read_back=True,
                )
                if refused is None:
                    refused = self._topic_refusal(letter.original_topic or "")
                full: bytes | None = None
                if refused is None and eligibility.stored_copy_cut(letter):
                    read = self._copies.read(letter)
                    if isinstance(read, str):
                        refused = eligibility.Refusal("truncated_copy", read)
                    else:
                        full = read
                if refused is not None:
                    decided.append(Outcome(dlq_id, "refused", refused.reason, refused.code))
                    continue
                record = eligibility.outgoing(letter, self.topics, str(uuid.uuid4()), full)
                if request.dry_run:
                    decided.append(_would_send(record))
                else:
                    to_send.append(record)
            sent = self._send(to_send)
            for outcome in sent:
                if outcome.status == "redriven":
                    session.add(_audit_row(outcome, letters[outcome.dlq_id].tenant, request))
            by_id = {o.dlq_id: o for o in [*decided, *sent]}
            return [by_id[dlq_id] for dlq_id in dlq_ids]

    def _topic_refusal(self, topic: str) -> eligibility.Refusal | None:
        if self._topic_problems.get(topic) is None:
            tenant = self.topics.tenant_of(topic) or ""
            self._topic_problems[topic] = self.topic_check(self.producer(), topic, tenant)
        problem = self._topic_problems[topic]
        return eligibility.Refusal("no_topic", problem) if problem else None

    def _send(self, records: list[eligibility.Outgoing]) -> list[Outcome]:
        if not records:
            return []
        reports: dict[str, tuple[KafkaError | None, Message | None]] = {}
        producer = self.producer()
        for record in records:

            def report(error: KafkaError | None, msg: Message | None, dlq_id: str = record.dlq_id) -> None:
                reports[dlq_id] = (error, msg)

            try:
                producer.produce(
                    record.topic,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    on_delivery=report,
                )
            except (BufferError, ValueError) as exc:  # a full queue, or a record over the client's limit
                reports[record.dlq_id] = (KafkaError(KafkaError._INVALID_ARG, str(exc)), None)
            producer.poll(0)
        producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 5)
        return [_delivered(record, *reports.get(record.dlq_id, (None, None))) for record in records]

    def close(self) -> None:
        self._copies.close()
        if self._producer is not None:
            self._producer.flush(DELIVERY_TIMEOUT_MS / 1000 + 5)


def _would_send(record: eligibility.Outgoing) -> Outcome:
    return Outcome(
        record.dlq_id, "would_send", topic=record.topic, key=record.key, value_size=len(record.value)
    )


def _delivered(record: eligibility.Outgoing, error: KafkaError | None, msg: Message | None) -> Outcome:
    if error is not None or msg is None:
        why = error.str() if error is not None else "no delivery report (the broker did not confirm it)"
        return Outcome(record.dlq_id, "failed", f"not sent: {why}", "delivery_failed", topic=record.topic)
    headers = dict(record.headers)
    redrive_id = headers[eligibility.REDRIVE_ID_HEADER]
    return Outcome(
        record.dlq_id,
        "redriven",
        redrive_id=redrive_id.decode() if isinstance(redrive_id, bytes) else str(redrive_id),
        topic=msg.topic(),
        partition=msg.partition(),
        offset=msg.offset(),
        key=record.key,
        value_size=len(record.value),
    )


def _audit_row(outcome: Outcome, tenant: str | None, request: Request) -> DeadLetterRedrive:
    assert outcome.redrive_id is not None and outcome.topic is not None  # a delivered record
    return DeadLetterRedrive(
        redrive_id=outcome.redrive_id,
        dlq_id=outcome.dlq_id,
        tenant=tenant,
        requester=storable_text(request.requester, MAX_NAME),
        reason=None if request.reason is None else storable_text(request.reason, MAX_MESSAGE),
        bulk_id=request.bulk_id or outcome.redrive_id,
        redriven_at=datetime.now(UTC),
        target_topic=outcome.topic,
        target_partition=outcome.partition if outcome.partition is not None else -1,
        target_offset=outcome.offset if outcome.offset is not None else -1,
    )
