"""Secrets end to end on the real engine: a step sends ``Authorization: Bearer ${{ secrets.API_TOKEN }}``
to a local server that checks it; then every place history lands (PostgreSQL, the prefix's Kafka
topics including dead letters, the processes' log lines) is searched for the token."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from services.bus.fetch import consume_ready
from services.bus.topics import admin_client
from services.config import Settings
from services.observability.logs import JsonFormatter
from services.secrets.masking import scrub_line
from tests.fixtures.engine import Engine
from tests.integration.test_projector_support import running_projector

pytestmark = pytest.mark.integration

WORKFLOW = """
name: secret_call
version: 1
trigger: {event: call}
steps:
  - id: call
    action: http.request
    inputs:
      url: "${{ trigger.data.base }}/ok"
      headers: {Authorization: "Bearer ${{ secrets.API_TOKEN }}"}
  - id: leak
    action: http.request
    needs: [call]
    inputs:
      url: "${{ trigger.data.base }}/fail?api_key=${{ secrets.API_TOKEN }}&page=1"
      headers: {X-Note: "${{ trigger.data.note }}"}
    retry: {max_attempts: 1}
"""

MISSING = """
name: secret_missing
version: 1
trigger: {event: miss}
steps:
  - {id: missing, action: echo, inputs: {x: "${{ secrets.NOT_CONFIGURED }}"}}
"""


class _Server:
    """A local API that accepts only ``Bearer <token>`` and echoes what it got (so the engine must
    mask what an action hands back); ``/fail`` answers 500 quoting the URL and the header."""

    def __init__(self, token: str) -> None:
        self.received: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                outer.received.append(auth)
                if self.path.startswith("/fail"):
                    self._reply(500, {"error": f"refused {self.path} (auth {auth})"})
                elif auth == f"Bearer {token}":
                    self._reply(200, {"ok": True, "you_sent": auth})
                else:
                    self._reply(401, {"error": "bad token"})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test's own server: its access log is not the engine's

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of the in-process services, formatted as the services write them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    others = list(root.handlers)  # pytest's own capture: shown on failure, so scrubbed as well
    for other in others:
        other.addFilter(_scrub_record)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for other in others:
            other.removeFilter(_scrub_record)


def _scrub_record(record: logging.LogRecord) -> bool:
    record.msg, record.args = scrub_line(record.getMessage()), ()
    return True


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s}s")


def _database_text(url: str) -> str:
    """Every row of every table of every schema, as text (bytea shows as hex)."""
    out: list[str] = []
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
        for schema, table in tables:
            out.append(f"-- {schema}.{table}")
            out.extend(row[0] for row in conn.execute(f'SELECT t::text FROM "{schema}"."{table}" t'))
    return "\n".join(out)


def _topic_bytes(settings: Settings) -> tuple[list[str], bytes]:
    """Every record (keys, values, headers) of every topic under the prefix, aborted ones too."""
    metadata = admin_client(settings).list_topics(timeout=10)
    names = sorted(t for t in metadata.topics if t.startswith(f"{settings.topic_prefix}."))
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap_servers,
            "group.id": f"grep-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "isolation.level": "read_uncommitted",
        }
    )
    chunks: list[bytes] = []
    try:
        ends: dict[tuple[str, int], int] = {}
        for name in names:
            for partition in metadata.topics[name].partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
                if high > 0:
                    ends[(name, partition)] = high
        consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, p in ends])
        deadline = time.monotonic() + 60
        while ends and time.monotonic() < deadline:
            for msg in consume_ready(consumer, 500, 0.5):
                if msg.error():
                    continue
                chunks += [msg.key() or b"", msg.value() or b""]
                for header in msg.headers() or []:
                    value = header[1]
                    chunks.append(value.encode() if isinstance(value, str) else value or b"")
            # positions, not offsets of records: transaction markers take offsets too
            for tp in consumer.position([TopicPartition(t, p) for t, p in ends]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    del ends[(tp.topic, tp.partition)]
        assert not ends, f"topics not read to their end: {ends}"
    finally:
        consumer.close()
    return names, b"\n".join(chunks)


def test_a_secret_reaches_the_server_and_nothing_else(
    engine_factory: Callable[..., Engine],
    database_url: str,
    captured_logs: io.StringIO,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.executor.service import run_executor
    from services.router.service import run_router

    token = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv("SWITCHYARD_SECRET_acme_API_TOKEN", token)
    overrides: dict[str, Any] = {"database_url": database_url}
    if "egress_allow_private" in Settings.model_fields:  # the SSRF guard's development switch
        overrides["egress_allow_private"] = True
    engine = engine_factory(**overrides)
    with _Server(token) as server, running_projector(engine.settings):
        assert engine.start("router", run_router, instance_id="r1").wait(60)
        assert engine.start("executor", run_executor, instance_id="e1").wait(60)
        engine.publish(WORKFLOW)
        engine.publish(MISSING)
        missing = engine.run_id("secret_missing", engine.trigger("miss", {}))
        # trigger data spelling a reference is text, never resolved
        key = engine.trigger("call", {"base": server.base, "note": "${{ secrets.API_TOKEN }}"})
        run_id = engine.run_id("secret_call", key)
        runs = engine.wait_terminal([run_id, missing], timeout_s=90)
        events = runs[run_id]

        by_step = {(e["step_id"], e["type"]): e.get("detail") or {} for e in events}
        assert ("call", "step_succeeded") in by_step, [e["type"] for e in events]
        assert server.received[0] == f"Bearer {token}"  # the real token went out, to the server only
        assert by_step[("call", "step_scheduled")]["inputs"]["headers"] == {
            "Authorization": "Bearer ${{ secrets.API_TOKEN }}"  # history keeps the reference
        }
        assert by_step[("leak", "step_scheduled")]["inputs"]["headers"] == {
            "X-Note": "$${{ secrets.API_TOKEN }}"  # data that looks like a reference, encoded
        }
        failures = [e["detail"] for e in runs[missing] if e["type"] == "step_failed"]
        assert [f["error_kind"] for f in failures] == ["secret_missing"]  # not retried
        assert "NOT_CONFIGURED" in failures[0]["error_message"]
        assert events[-1]["type"] == "run_failed"

        with psycopg.connect(database_url) as conn:

            def projected() -> bool:
                state = conn.execute("SELECT state FROM runs WHERE run_id = %s", (run_id,)).fetchone()
                stored = conn.execute(
                    "SELECT count(*) FROM run_events WHERE run_id = %s", (run_id,)
                ).fetchone()
                letters = conn.execute(
                    "SELECT count(*) FROM dead_letters WHERE run_id = %s", (run_id,)
                ).fetchone()
                conn.commit()
                return (
                    state is not None
                    and state[0] == "failed"
                    and stored is not None
                    and stored[0] == len(events)
                    and letters is not None
                    and letters[0] >= 1
                )

            _wait(projected, "the projector wrote the run, its events and its dead letter")
            inputs = conn.execute(
                "SELECT inputs::text FROM attempts WHERE run_id = %s AND step_id = 'call'", (run_id,)
            ).fetchone()
            assert inputs is not None and "${{ secrets.API_TOKEN }}" in inputs[0]

    database = _database_text(database_url)
    topics, records = _topic_bytes(engine.settings)
    logged = captured_logs.getvalue()
    assert engine.topics.dlq in topics and engine.topics.events in topics and engine.topics.commands in topics
    assert "dead_letters" in database and "step_failed" in database and '"attempt failed"' in logged
    # where the token would be without the engine's care: the server's echo, the failed URL
    assert "Bearer [redacted]" in database
    assert "/fail?api_key=" in logged and "/fail?api_key=" in database
    hex_token = token.encode().hex()
    # booleans first: a failing assertion must not print the texts holding the token
    in_database = token in database or hex_token in database
    in_records = token.encode() in records
    in_logs = token in logged
    assert not in_database, "the token is stored in PostgreSQL"
    assert not in_records, "the token is in a Kafka record of the prefix"
    assert not in_logs, "the token is in a log line"
