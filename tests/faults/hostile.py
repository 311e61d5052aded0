"""The hostile tenant of the hostile-tenant scenario: its workflows, its HTTP server, its records.

``evil`` is a registered tenant with its own signed workflows that sends, interleaved, every kind
of record issue 14 found able to crash, stall or slow the engine for other tenants:

* triggers whose JSON the engine must refuse at the edge: lone surrogates (as ``\\ud800`` escape
  text, in data, idempotency key and correlation id; as CESU bytes in an Avro string), invalid
  UTF-8, ``NaN`` / ``Infinity``, ``1e400``, 65 and 100,000 levels of nesting;
* triggers the engine accepts but must keep within its record budgets: ~255 KB of ``1e15``
  (re-encodes to ~1 MB), a 260,000-byte Kafka key without idempotency key (for a workflow with a
  ~500 KB step output), 250 KB of data echoed by a step;
* triggers for its own workflow whose filter is expensive (``map`` over 12,000 items);
* runs whose ``http.request`` step gets a body with lone-surrogate escapes, ``NaN``, 300 levels of
  nesting, ~500 KB of JSON or 1.5 MB of text from :class:`HostileServer`;
* control records naming a 300,000-character tenant or requester, garbage bytes, and cancels of
  the *other* tenant's runs (naming that tenant, and naming itself);
* triggers on hundreds of made-up tenants' topics.

Each record is a :class:`HostileItem` that says which outcomes account for it (:class:`Expect`);
:mod:`tests.faults.accounting` matches them to dead letters, runs and counted refusals.
"""

from __future__ import annotations

import fnmatch
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics
from services.config import Settings
from services.contracts import serde
from services.contracts.catalog import catalog

GOOD = "good"
EVIL = "evil"
#: The filter issue 14 measured holding intake for seconds (quadratic ``map``), and the items it runs on.
EXPENSIVE_FILTER = "size(trigger.data.items.map(i, i)) > 0"
COSTLY_ITEMS = 12_000
#: If validation refuses EXPENSIVE_FILTER statically, the first of these it accepts is used (most
#: expensive first: a nested comprehension is quadratic by design, ``filter`` was quadratic too).
FALLBACK_FILTERS = (
    "trigger.data.items.exists(i, trigger.data.items.exists(j, j == i + 1))",
    "size(trigger.data.items.filter(i, i >= 0)) > 0",
    "trigger.data.items.all(i, i >= 0)",
)
FAST_RETRY = {"max_attempts": 2, "initial_backoff": 0.05, "max_backoff": 0.1}
#: Error kinds (of dead letters and failed runs) that say "something failed" without saying what.
CATCH_ALL_KINDS = frozenset(
    {
        "router_error",
        "intake_error",
        "core_error",
        "executor_error",
        "action_error",
        "projector_error",
        "internal_error",
        "processor_error",
        "unexpected_error",
    }
)


# --- workflows -----------------------------------------------------------------------------------


def chain(name: str, event: str, actions: list[str]) -> dict[str, Any]:
    """A linear chain of ``noop`` / ``echo`` steps (the good tenant's ordinary work)."""
    steps: list[dict[str, Any]] = []
    for i, action in enumerate(actions):
        step: dict[str, Any] = {"id": f"s{i}", "action": action, "timeout": 60, "retry": FAST_RETRY}
        if i:
            step["needs"] = [f"s{i - 1}"]
        if action == "echo":
            step["inputs"] = {"n": "${{ trigger.data.n }}", "step": f"s{i}"}
        steps.append(step)
    return {"name": name, "version": 1, "trigger": {"event": event}, "steps": steps}


def good_workflows() -> list[dict[str, Any]]:
    return [
        chain("chain3", "good.chain3", ["noop", "echo", "noop"]),
        chain("chain5", "good.chain5", ["echo", "noop", "echo", "noop", "echo"]),
        chain("chain4", "good.chain4", ["noop", "noop", "echo", "echo"]),
    ]


def evil_workflows(server_url: str) -> list[dict[str, Any]]:
    """``echo`` (echoes the whole trigger data) and ``fetch`` (GETs ``<server>/<data.mode>``)."""
    echo = {
        "name": "echo",
        "version": 1,
        "trigger": {"event": "evil.echo"},
        "steps": [
            {
                "id": "e",
                "action": "echo",
                "inputs": {"data": "${{ trigger.data }}"},
                "timeout": 30,
                "retry": FAST_RETRY,
            },
            {"id": "n", "action": "noop", "needs": ["e"]},
        ],
    }
    fetch = {
        "name": "fetch",
        "version": 1,
        "trigger": {"event": "evil.fetch"},
        "steps": [
            {
                "id": "get",
                "action": "http.request",
                "inputs": {"method": "GET", "url": server_url + "/${{ trigger.data.mode }}", "timeout": 20},
                "timeout": 30,
                "retry": FAST_RETRY,
            },
            {
                "id": "after",
                "action": "echo",
                "needs": ["get"],
                "inputs": {"status": "${{ steps.get.output.status }}"},
            },
        ],
    }
    return [echo, fetch]


def costly_workflow(filter_expression: str) -> dict[str, Any]:
    return {
        "name": "costly",
        "version": 1,
        "trigger": {"event": "evil.costly", "filter": filter_expression},
        "steps": [{"id": "n", "action": "noop"}],
    }


# --- the hostile HTTP server ----------------------------------------------------------------------


def _nested(levels: int) -> bytes:
    return b'{"v": ' + b"[" * levels + b"1" + b"]" * levels + b"}"


BODIES: dict[str, tuple[str, bytes]] = {
    "surrogate": ("application/json", b'{"note": "\\ud800", "pair": "\\udfff\\ud800", "ok": true}'),
    "nan": ("application/json", b'{"value": NaN, "high": Infinity, "low": -Infinity, "huge": 1e400}'),
    "deep": ("application/json", _nested(300)),
    # just under the executor's 512 KiB output limit: accepted, and big in the run's state record
    "big": ("application/json", b'{"blob": "' + b"b" * 500_000 + b'"}'),
    "huge": ("text/plain; charset=utf-8", b"h" * 1_500_000),
}


class HostileServer:
    """Answers ``GET /<mode>`` with one of :data:`BODIES`; counts the calls per mode."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mode = self.path.strip("/").split("?", 1)[0]
                with server.lock:
                    server.calls[mode] += 1
                content_type, body = BODIES.get(mode, ("text/plain", b"unknown mode"))
                self.send_response(200 if mode in BODIES else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="hostile-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> HostileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- hostile records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """Which outcomes account for a hostile record.

    ``dead_letter``: the accepted ``error_kind``s of its dead letter (``None``: any kind that is not
    a catch-all); ``run``: a run it started, ended with a final event, accounts for it; ``counted``:
    a refusal counted by the router's ``switchyard_triggers_total{outcome="unmatched"}`` does (a
    filter that could not be evaluated).
    """

    dead_letter: frozenset[str] | None
    run: bool = False
    counted: bool = False


def refused(*kinds: str) -> Expect:
    return Expect(frozenset(kinds))


ANY_DEAD_LETTER_OR_RUN = Expect(None, run=True)


@dataclass
class HostileItem:
    """One hostile record: what it is, where it went (after delivery) and what accounts for it."""

    kind: str
    topic: str
    value: bytes | None
    key: bytes | None
    expect: Expect
    workflows: tuple[str, ...] = ()  # evil workflows it may start
    idempotency_key: str | None = None  # the key its runs are derived from (None: the Kafka key)
    command_id: str | None = None
    position: tuple[str, int, int] | None = None
    sent_at: float = 0.0
    delivery_error: str | None = None

    @property
    def source(self) -> str | None:
        """The ``source`` a run started by this record names in its ``run_pending`` event."""
        return None if self.position is None else "/".join(str(p) for p in self.position)


def trigger_json(event: str, data_text: str, key: str | None, extra: str = "") -> bytes:
    """A plain-JSON trigger written as text, so that escapes like ``\\ud800`` reach the engine as is."""
    key_part = f', "idempotency_key": "{key}"' if key is not None else ""
    return f'{{"event_type": "{event}", "data": {data_text}{key_part}{extra}}}'.encode()


def trigger_avro(event: str, data_json: str, key: str | None, correlation_id: str | None = None) -> bytes:
    return serde.encode(
        "TriggerEvent",
        {
            "event_type": event,
            "data_json": data_json,
            "idempotency_key": key,
            "correlation_id": correlation_id,
            "occurred_at": int(time.time() * 1000),
        },
    )


def control_command(tenant: str, run_id: str | None, requester: str, command_id: str) -> bytes:
    return serde.encode(
        "ControlCommand",
        {
            "command_id": command_id,
            "kind": "cancel",
            "requester": requester,
            "tenant": tenant,
            "run_id": run_id,
            "step_id": None,
            "reason": "hostile tenant",
            "correlation_id": str(uuid.uuid4()),
            "issued_at": int(time.time() * 1000),
            "filter_json": None,
            "dry_run": False,
        },
    )


Builder = Callable[[int], HostileItem]


class HostileRecords:
    """Builders of every hostile record kind; ``n`` makes each record's keys unique."""

    def __init__(self, prefix: str, rng: random.Random, good_runs: Callable[[], list[str]]) -> None:
        self.topics = Topics(prefix)
        self.evil = self.topics.tenant_triggers(EVIL)
        self.rng = rng
        self.good_runs = good_runs

    def round(self) -> dict[str, Builder]:
        """One record of each kind (the ghost-tenant triggers are built by :meth:`ghost`)."""
        return {
            # refused at the edge, by strict JSON decoding
            "surrogate_data_json": self._json("evil.echo", '{"note": "\\ud800"}', refused("invalid_json")),
            "surrogate_data_avro": self._avro("evil.echo", '{"note": "\\ud800"}', refused("invalid_json")),
            "surrogate_pair_reversed": self._json(
                "evil.echo", '{"note": "\\udfff\\ud800"}', refused("invalid_json")
            ),
            "surrogate_idempotency_key": self._json(
                "evil.echo", "{}", refused("invalid_json"), key_text="k-\\ud800"
            ),
            "surrogate_correlation_id": self._json(
                "evil.echo", "{}", refused("invalid_json"), extra=', "correlation_id": "\\udfff"'
            ),
            "surrogate_bytes_in_avro_key": self._avro_cesu_key(),
            "invalid_utf8": self._raw(
                b'{"event_type": "evil.echo", "data": {"note": "\xff\xfe\xed\xa0\x80"}}',
                refused("invalid_utf8"),
            ),
            "nan": self._json("evil.echo", '{"x": NaN}', refused("invalid_json")),
            "infinity_avro": self._avro("evil.echo", '{"x": -Infinity}', refused("invalid_json")),
            "exponent_1e400": self._json("evil.echo", '{"x": 1e400}', refused("invalid_json")),
            "depth_65": self._json("evil.echo", "[" * 64 + "]" * 64, refused("too_deep")),
            "depth_100000": self._json(
                "evil.echo", "[" * 100_000 + "]" * 100_000, refused("invalid_json", "too_deep")
            ),
            # accepted input that must stay within the engine's record budgets
            "numbers_1e15": self._numbers(),
            "long_kafka_key": self._long_key(),
            "echo_250kb": self._json(
                "evil.echo", '{"blob": "' + "y" * 250_000 + '"}', ANY_DEAD_LETTER_OR_RUN, workflow="echo"
            ),
            # cost: the expensive filter of evil's own workflow
            "costly_filter": self._json(
                "evil.costly",
                json.dumps({"items": list(range(COSTLY_ITEMS))}),
                Expect(None, run=True, counted=True),
                workflow="costly",
            ),
            # action outputs the engine must refuse or bound
            **{
                f"http_body_{mode}": self._json(
                    "evil.fetch", json.dumps({"mode": mode}), ANY_DEAD_LETTER_OR_RUN, workflow="fetch"
                )
                for mode in BODIES
            },
            # the control path
            "control_long_tenant": self._control(
                lambda: ("t" * 300_000, str(uuid.uuid4()), "ops@evil"), None
            ),
            "control_long_requester": self._control(lambda: (EVIL, str(uuid.uuid4()), "r" * 300_000), None),
            "control_cancel_good_naming_good": self._control(
                lambda: (GOOD, self._good_run(), "ops@evil"), frozenset({"control_refused"})
            ),
            "control_cancel_good_naming_evil": self._control(
                lambda: (EVIL, self._good_run(), "ops@evil"), frozenset({"control_refused"})
            ),
            "control_garbage": lambda n: HostileItem(
                "",
                self.topics.control,
                bytes([self.rng.randrange(1, 256)]) + self.rng.randbytes(300),
                f"garbage-{n}".encode(),
                refused("bad_framing", "invalid_json", "unknown_schema", "wrong_schema", "bad_avro"),
            ),
            "control_garbage_framed": lambda n: HostileItem(
                "",
                self.topics.control,
                bytes([0])
                + catalog().current["ControlCommand"].schema_id.to_bytes(4, "big")
                + self.rng.randbytes(300),
                f"garbage-framed-{n}".encode(),
                refused("bad_avro", "bad_framing"),
            ),
        }

    def ghost(self, name: str) -> Builder:
        """A well-formed trigger on a made-up (unregistered) tenant's topic."""

        def build(n: int) -> HostileItem:
            value = trigger_avro("evil.echo", "{}", f"ghost-{n}")
            return HostileItem(
                "", self.topics.tenant_triggers(name), value, f"ghost-{n}".encode(), refused("unknown_tenant")
            )

        return build

    # --- builders ------------------------------------------------------------------------------------
    def _json(
        self,
        event: str,
        data_text: str,
        expect: Expect,
        *,
        workflow: str = "echo",
        key_text: str | None = None,
        extra: str = "",
    ) -> Builder:
        def build(n: int) -> HostileItem:
            key = key_text if key_text is not None else f"evil-{n}"
            return HostileItem(
                "",
                self.evil,
                trigger_json(event, data_text, key, extra),
                f"evil-{n}".encode(),
                expect,
                (workflow,),
                key if key_text is None else None,
            )

        return build

    def _avro(self, event: str, data_json: str, expect: Expect) -> Builder:
        def build(n: int) -> HostileItem:
            key = f"evil-{n}"
            value = trigger_avro(event, data_json, key)
            return HostileItem("", self.evil, value, key.encode(), expect, ("echo",), key)

        return build

    def _avro_cesu_key(self) -> Builder:
        def build(n: int) -> HostileItem:
            # "SURR" in the key, replaced by a UTF-8-encoded lone surrogate (ED A0 80) + "A": same length
            value = trigger_avro("evil.echo", "{}", f"k-{n}-SURR").replace(b"SURR", b"\xed\xa0\x80A")
            return HostileItem(
                "",
                self.evil,
                value,
                f"evil-{n}".encode(),
                refused("bad_avro", "invalid_utf8", "invalid_field"),
                ("echo",),
            )

        return build

    def _raw(self, value: bytes, expect: Expect) -> Builder:
        def build(n: int) -> HostileItem:
            key = f"evil-{n}"  # no idempotency key in the record: a run would derive from the Kafka key
            return HostileItem("", self.evil, value, key.encode(), expect, ("echo",), key)

        return build

    def _numbers(self) -> Builder:
        """~255 KB of ``1e15``: under the trigger limit as sent, ~1 MB once re-encoded."""

        def build(n: int) -> HostileItem:
            key = f"evil-{n}"
            head = f'{{"event_type": "evil.echo", "idempotency_key": "{key}", "data": {{"items": ['
            count = (255_000 - len(head)) // 5
            value = (head + ",".join(["1e15"] * count) + "]}}").encode()
            return HostileItem("", self.evil, value, key.encode(), ANY_DEAD_LETTER_OR_RUN, ("echo",), key)

        return build

    def _long_key(self) -> Builder:
        """A 260,000-byte Kafka key and no idempotency key, for the workflow with a ~500 KB output."""

        def build(n: int) -> HostileItem:
            key = f"{n:06d}-" + "K" * (260_000 - 7)
            value = trigger_json("evil.fetch", '{"mode": "big"}', None)
            return HostileItem("", self.evil, value, key.encode(), ANY_DEAD_LETTER_OR_RUN, ("fetch",), key)

        return build

    def _control(
        self, fields: Callable[[], tuple[str, str | None, str]], kinds: frozenset[str] | None
    ) -> Builder:
        def build(n: int) -> HostileItem:
            tenant, run_id, requester = fields()
            command_id = str(uuid.uuid4())
            return HostileItem(
                "",
                self.topics.control,
                control_command(tenant, run_id, requester, command_id),
                f"control-{n}".encode(),
                Expect(kinds),
                command_id=command_id,
            )

        return build

    def _good_run(self) -> str:
        runs = self.good_runs()
        return runs[-1] if runs else str(uuid.uuid4())


# --- sending -------------------------------------------------------------------------------------


@dataclass
class HostileSender:
    """Sends the hostile records at scheduled instants, in bursts, in a thread.

    ``windows`` are (start, end) offsets in seconds from :meth:`start`: each window gets one record
    of every kind and its share of the ghost-tenant triggers, shuffled and spread evenly (with
    jitter) over it. Each record's position is recorded from its delivery report.
    """

    settings: Settings
    records: HostileRecords
    ghosts: list[str]
    windows: list[tuple[float, float]]
    rng: random.Random
    only: frozenset[str] | None = None
    items: list[HostileItem] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def duration_s(self) -> float:
        return max((end for _, end in self.windows), default=0.0)

    def start(self) -> HostileSender:
        self.producer = Producer(plain_producer_config(self.settings, **{"message.timeout.ms": 120_000}))
        self.schedule: list[tuple[float, str, Builder]] = []
        ghosts = [self.ghosts[i :: len(self.windows)] for i in range(len(self.windows))]
        for (begin, end), names in zip(self.windows, ghosts, strict=True):
            burst = [(kind, b) for kind, b in self.records.round().items() if self._wanted(kind)]
            if self._wanted("ghost_tenant"):
                burst += [("ghost_tenant", self.records.ghost(name)) for name in names]
            self.rng.shuffle(burst)
            step = (end - begin) / max(1, len(burst))
            self.schedule += [
                (begin + i * step + self.rng.uniform(0, step), kind, b) for i, (kind, b) in enumerate(burst)
            ]
        self.thread = threading.Thread(target=self._run, name="hostile", daemon=True)
        self.thread.start()
        return self

    def _wanted(self, kind: str) -> bool:
        return self.only is None or any(fnmatch.fnmatchcase(kind, pattern) for pattern in self.only)

    def _run(self) -> None:
        started = time.monotonic()
        for n, (offset, kind, build) in enumerate(self.schedule):
            if self.stop.wait(max(0.0, offset - (time.monotonic() - started))):
                return
            item = build(n)
            item.kind = kind
            item.sent_at = time.time()
            with self.lock:
                self.items.append(item)

            def delivered(err: KafkaError | None, msg: Message, item: HostileItem = item) -> None:
                if err is not None:
                    item.delivery_error = str(err)
                else:
                    item.position = (msg.topic() or "", msg.partition() or 0, msg.offset() or 0)

            while True:
                try:
                    self.producer.produce(item.topic, key=item.key, value=item.value, on_delivery=delivered)
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)

    def finish(self, timeout_s: float = 120) -> list[HostileItem]:
        """Wait for the schedule to end and every record to be acknowledged."""
        self.thread.join(self.duration_s + 60)
        remaining = self.producer.flush(timeout_s)
        assert remaining == 0, f"{remaining} hostile records not delivered within {timeout_s}s"
        with self.lock:
            return list(self.items)

    def sent(self) -> list[HostileItem]:
        with self.lock:
            return list(self.items)
