"""Accounting for hostile records: each one must end as a dead letter, a finished run or a counted refusal.

A :class:`DlqTail` reads the dead-letter topic (``read_committed``) as the engine writes it. Records
are matched to what became of them:

* by **position** — a dead letter names the topic, partition and offset of the record it refuses;
  a run names it as the ``source`` of its ``run_pending`` event;
* by **run id** — ``uuid5(tenant, workflow, key)`` of the record's idempotency key (or Kafka key);
* by **command id** — a refused control command's dead letter holds the command;
* by the ``source`` of a dead-lettered ``RunRequested`` (a core-side refusal of a run request).

A record matched by nothing is *unaccounted*; one matched only by a refusal the router counts
(``switchyard_triggers_total{tenant="evil",outcome="unmatched"}``) is a *counted refusal*.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from services.bus.fetch import consume_ready
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.router.records import run_id_for
from tests.faults.harness import TERMINAL
from tests.faults.hostile import CATCH_ALL_KINDS, EVIL, GOOD, HostileItem

DLQ_PARTITIONS = 3


@dataclass(frozen=True)
class Letter:
    """What the accounting needs of one dead letter."""

    error_kind: str
    service: str
    position: tuple[str, int, int] | None
    run_id: str | None
    tenant: str | None
    command_id: str | None
    source: str | None  # of a dead-lettered RunRequested
    size: int
    message: str


def _letter(value: bytes, inbox: str) -> Letter:
    _, rec = serde.decode(value, expected="DeadLetter")
    position = None
    if rec["original_topic"] is not None and rec["original_offset"] is not None:
        position = (rec["original_topic"], rec["original_partition"] or 0, rec["original_offset"])
    run_id, command_id, source = rec["run_id"], None, None
    original = rec["original_value"]
    if original:
        try:  # a control command, as sent or as the core dead-letters it
            _, command = serde.decode(original, expected="ControlCommand")
            command_id = command["command_id"]
        except serde.ContractError:
            pass
        if rec["original_topic"] == inbox:
            try:
                kind, body = serde.decode_inbox(original)
                run_id = run_id or body.get("run_id")
                command_id = command_id or body.get("command_id")
                source = body.get("source") if kind == "RunRequested" else None
            except serde.ContractError:
                pass
    if run_id is None and rec["original_topic"] == inbox and rec["original_key"]:
        run_id = rec["original_key"].decode(errors="replace")  # inbox records are keyed by run id
    return Letter(
        rec["error_kind"],
        rec["service"],
        position,
        run_id,
        rec["tenant"],
        command_id,
        source,
        len(value),
        rec["error_message"][:300],
    )


class DlqTail:
    """A live ``read_committed`` tail of the dead-letter topic."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.letters: list[Letter] = []
        self.undecodable = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="dlq-tail", daemon=True)

    def start(self) -> DlqTail:
        self.thread.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        conf = self.settings.kafka_config()
        conf.update(
            {
                "group.id": f"faults-dlq-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
        consumer = Consumer(conf)
        consumer.assign([TopicPartition(self.topics.dlq, p, OFFSET_BEGINNING) for p in range(DLQ_PARTITIONS)])
        try:
            while not self.stop.is_set():
                for msg in consume_ready(consumer, 200, 0.2):
                    if msg.error() or msg.value() is None:
                        continue
                    try:
                        letter = _letter(msg.value() or b"", self.topics.inbox)
                    except serde.ContractError:
                        with self.lock:
                            self.undecodable += 1
                        continue
                    with self.lock:
                        self.letters.append(letter)
        finally:
            consumer.close()

    def snapshot(self) -> list[Letter]:
        with self.lock:
            return list(self.letters)


@dataclass
class RunView:
    """One run in the history: its events' types, seqs, source, terminal events and failure kinds."""

    tenant: str
    types: list[str] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    source: str | None = None
    failure_kinds: list[str] = field(default_factory=list)
    at_terminal: list[int] = field(default_factory=list)

    @property
    def terminals(self) -> list[str]:
        return [t for t in self.types if t in TERMINAL]

    @property
    def seq_gap(self) -> bool:
        return sorted(self.seqs) != list(range(1, len(self.seqs) + 1))


def run_views(events: list[dict[str, Any]]) -> dict[str, RunView]:
    runs: dict[str, RunView] = {}
    for event in events:
        run = runs.setdefault(event["run_id"], RunView(event["tenant"]))
        run.types.append(event["type"])
        run.seqs.append(event["seq"])
        detail = event.get("detail") or {}
        if event["type"] == "run_pending" and isinstance(detail, dict):
            run.source = detail.get("source")
        if event["type"] == "run_failed" and isinstance(detail, dict):
            run.failure_kinds.append(str(detail.get("error_kind")))
        if event["type"] in TERMINAL:
            run.at_terminal.append(event["at"])
    return runs


@dataclass
class Outcome:
    item: HostileItem
    how: str  # dead_letter | run | counted_refusal | unaccounted | not_delivered
    detail: str
    problems: list[str] = field(default_factory=list)
    runs: dict[str, RunView] = field(default_factory=dict)
    letters: list[Letter] = field(default_factory=list)

    def sample(self) -> dict[str, Any]:
        """What became of this record, for the results file."""
        return {
            "source": self.item.source,
            "how": self.how,
            "problems": self.problems,
            "runs": {run_id: run.types for run_id, run in self.runs.items()},
            "dead_letters": [f"{x.service}/{x.error_kind}: {x.message}" for x in self.letters],
        }

    @property
    def accounted(self) -> bool:
        return self.how in ("dead_letter", "run", "counted_refusal") and not self.problems


@dataclass
class Accounting:
    outcomes: list[Outcome]
    unattributed: list[Letter]  # dead letters matched to no hostile record
    good_letters: list[Letter]  # dead letters of the good tenant's records or runs (none allowed)

    def unaccounted(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.accounted]

    def figures(self) -> dict[str, Any]:
        by_kind: dict[str, Counter[str]] = defaultdict(Counter)
        samples: dict[str, dict[str, Any]] = {}
        for o in self.outcomes:
            by_kind[o.item.kind][f"{o.how}: {o.detail}"] += 1
            if o.item.kind not in samples or (
                not o.accounted and samples[o.item.kind]["how"] != "unaccounted"
            ):
                samples[o.item.kind] = o.sample()
        return {
            "records": len(self.outcomes),
            "accounted": sum(1 for o in self.outcomes if o.accounted),
            "by_how": dict(Counter(o.how for o in self.outcomes)),
            "by_kind": {kind: dict(c) for kind, c in sorted(by_kind.items())},
            "problems": [f"{o.item.kind}: {p}" for o in self.outcomes for p in o.problems][:50],
            "unattributed_dead_letters": dict(
                Counter(f"{x.service}/{x.error_kind}" for x in self.unattributed)
            ),
            "good_dead_letters": dict(Counter(f"{x.service}/{x.error_kind}" for x in self.good_letters)),
            "sample_by_kind": dict(sorted(samples.items())),
        }


def account(
    items: list[HostileItem],
    letters: list[Letter],
    runs: dict[str, RunView],
    counted_refusals: int,
    good_runs: set[str],
) -> Accounting:
    """Match every hostile record to what became of it (see the module docstring)."""
    by_position: dict[tuple[str, int, int], list[Letter]] = defaultdict(list)
    by_command: dict[str, list[Letter]] = defaultdict(list)
    by_source: dict[str, list[Letter]] = defaultdict(list)
    by_run: dict[str, list[Letter]] = defaultdict(list)
    for letter in letters:
        if letter.position is not None:
            by_position[letter.position].append(letter)
        if letter.command_id is not None:
            by_command[letter.command_id].append(letter)
        if letter.source is not None:
            by_source[letter.source].append(letter)
        if letter.run_id is not None:
            by_run[letter.run_id].append(letter)
    run_by_source = {run.source: run_id for run_id, run in runs.items() if run.source and run.tenant == EVIL}

    used: set[int] = set()
    outcomes: list[Outcome] = []
    budget = counted_refusals
    for item in items:
        if item.position is None:
            outcomes.append(Outcome(item, "not_delivered", item.delivery_error or "no delivery report"))
            continue
        source = item.source or ""
        run_ids = (
            {run_id_for(EVIL, wf, item.idempotency_key) for wf in item.workflows}
            if item.idempotency_key
            else set()
        )
        if source in run_by_source:
            run_ids.add(run_by_source[source])
        started = {r: runs[r] for r in run_ids if r in runs}
        candidates = list(by_position.get(item.position, []))
        if item.command_id is not None:
            candidates += by_command.get(item.command_id, [])
        candidates += by_source.get(source, [])
        for run_id in run_ids - set(started):  # a run request the core refused
            candidates += [
                x for x in by_run.get(run_id, []) if x.position and x.position[0].endswith(".inbox")
            ]
        own = list({id(x): x for x in candidates}.values())  # the same letter found twice counts once
        run_letters = [x for r in started for x in by_run.get(r, []) if id(x) not in {id(y) for y in own}]
        used.update(id(x) for x in own + run_letters)

        if started:
            problems = []
            terminals = [t for run in started.values() for t in run.terminals]
            if any(len(run.terminals) != 1 for run in started.values()):
                problems.append(
                    f"runs without exactly one final event: {[run.types for run in started.values()]}"
                )
            if any(run.seq_gap for run in started.values()):
                problems.append("a run with a gap in its event sequence")
            if not item.expect.run:
                problems.append("hostile input was accepted and started a run")
            problems += [
                f"a record of its run dead-lettered with a catch-all error_kind {x.error_kind!r}: {x.message}"
                for x in run_letters
                if x.error_kind in CATCH_ALL_KINDS
            ]
            kinds = sorted({k for run in started.values() for k in run.failure_kinds})
            problems += [
                f"its run failed with a catch-all error_kind {k!r}" for k in kinds if k in CATCH_ALL_KINDS
            ]
            detail = "/".join(terminals) + (f" ({', '.join(kinds)})" if kinds else "")
            outcomes.append(Outcome(item, "run", detail, problems, started, own + run_letters))
            continue
        if own:
            kinds = [x.error_kind for x in own]
            problems = []
            if len(own) > 1:
                problems.append(f"{len(own)} dead letters for one record: {kinds}")
            allowed = item.expect.dead_letter
            for kind in kinds:
                if allowed is None and kind in CATCH_ALL_KINDS:
                    problems.append(f"dead letter with a catch-all error_kind {kind!r}: {own[0].message}")
                elif allowed is not None and kind not in allowed:
                    problems.append(
                        f"error_kind {kind!r}, expected one of {sorted(allowed)}: {own[0].message}"
                    )
            outcomes.append(Outcome(item, "dead_letter", ",".join(sorted(set(kinds))), problems, letters=own))
            continue
        if item.expect.counted and budget > 0:
            budget -= 1
            outcomes.append(Outcome(item, "counted_refusal", "triggers_total{outcome=unmatched}"))
            continue
        outcomes.append(Outcome(item, "unaccounted", "no dead letter, no run, no counted refusal"))

    unattributed = [x for x in letters if id(x) not in used]
    good = [x for x in unattributed if x.tenant == GOOD or x.run_id in good_runs]
    good_ids = {id(x) for x in good}
    return Accounting(outcomes, [x for x in unattributed if id(x) not in good_ids], good)
