"""Micro benchmark of the router's and executor's per-step serialisation: the candidates measured
for issue 17 and what the engine uses now.

``python -m benchmarks.serde_bench`` prints a markdown table of CPU µs per call (process time,
best of 5 repeats: a shared, loaded machine slows everything but rarely the best repeat) and each
candidate's ratio to the first row of its group (the cost before issue 17). Groups:

- run state snapshot (a 10-step chain half done, small outputs): version 1 (named fields, orjson
  on the dataclasses), version 2 (positional arrays, what ``RunState.to_json`` writes now),
  msgspec JSON and MessagePack on the same dataclasses (when msgspec is installed: it is not a
  dependency, it lost);
- Avro records (``RunEvent``, ``StepCommand``, ``StepResult`` in the inbox union, the changelog
  ``RouterState``): fastavro's ``schemaless_writer`` vs the compiled writers of
  :mod:`services.contracts.avro_writer`. (Compiled *readers* were measured too and dropped:
  0.7-1.07 of fastavro's reader, nothing for ``StepCommand``; the projector keeps its own for
  ``RunEvent``);
- event ids: ``uuid5`` vs a 16-byte BLAKE2b vs ``<run id>:<seq>`` (what the router writes now).
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import timeit
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

import fastavro

from services.contracts import serde
from services.contracts.avro_writer import compile_writer
from services.contracts.catalog import catalog
from services.router.state import RunState, RunStatus, StepRecord

Row = tuple[str, str, float]


def _run() -> RunState:
    run = RunState(
        run_id=str(uuid.uuid4()),
        tenant="acme",
        workflow="chain10",
        version=3,
        partition=1,
        correlation_id=str(uuid.uuid4()),
        idempotency_key="bench-000123",
        trigger={"event": "bench.chain", "data": {"n": 123}},
        arrival=17,
        created_ms=1764500000000,
        status=RunStatus.RUNNING,
        seq=12,
    )
    for i in range(10):
        done = i < 5
        run.steps[f"s{i}"] = StepRecord(
            status="succeeded" if done else "pending",
            attempt=1 if done else 0,
            output={"ok": True, "n": i} if done else None,
            output_bytes=18 if done else 0,
        )
    return run


def _cpu_us(fn: Callable[[], object], number: int) -> float:
    best = min(timeit.Timer(fn, timer=time.process_time).repeat(5, number))
    return best / number * 1e6


def _fastavro(name: str) -> Callable[[dict[str, Any]], bytes]:
    parsed = catalog().current[name].parsed

    def write(record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed, record)
        return buf.getvalue()

    return write


def _records(run: RunState) -> dict[str, dict[str, Any]]:
    event = {
        "event_id": f"{run.run_id}:12",
        "run_id": run.run_id,
        "tenant": run.tenant,
        "workflow": run.workflow,
        "version": run.version,
        "seq": 12,
        "type": "step_succeeded",
        "step_id": "s4",
        "attempt": 1,
        "state": "succeeded",
        "at": 1764500000123,
        "correlation_id": run.correlation_id,
        "detail_json": None,
    }
    command = {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "workflow": run.workflow,
        "version": run.version,
        "step_id": "s5",
        "attempt": 1,
        "action": "noop",
        "inputs_json": '{"n":123}',
        "idempotency_key": f"{run.run_id}:s5:1",
        "deadline": 1764500030123,
        "scopes": [],
        "correlation_id": run.correlation_id,
        "issued_at": 1764500000123,
        "reply_partition": 1,
    }
    result = {
        "run_id": run.run_id,
        "tenant": run.tenant,
        "step_id": "s5",
        "attempt": 1,
        "status": "succeeded",
        "output_json": '{"ok":true}',
        "error_kind": None,
        "error_message": None,
        "retryable": True,
        "started_at": 1764500000130,
        "finished_at": 1764500000131,
        "correlation_id": run.correlation_id,
        "executor_id": "e1",
    }
    state = {"run_id": run.run_id, "tenant": run.tenant, "snapshot_json": run.to_json(), "updated_at": 1}
    return {
        "RunEvent": event,
        "StepCommand": command,
        "InboxRecord": {"body": ("switchyard.StepResult", result)},
        "RouterState": state,
    }


def measure(number: int = 5000) -> list[Row]:
    run = _run()
    rows: list[Row] = []
    v1, v2 = run.to_json_v1(), run.to_json()
    rows += [
        ("state encode", f"v1 named fields, orjson ({len(v1)} B)", _cpu_us(run.to_json_v1, number)),
        ("state encode", f"v2 arrays, orjson ({len(v2)} B) [used]", _cpu_us(run.to_json, number)),
    ]
    decode = [
        ("state decode", "v1 named fields, orjson", _cpu_us(lambda: RunState.from_json(v1), number)),
        ("state decode", "v2 arrays, orjson [used]", _cpu_us(lambda: RunState.from_json(v2), number)),
    ]
    try:
        import msgspec  # optional: not a dependency
    except ImportError:
        pass
    else:
        js, mp = msgspec.json.Encoder(), msgspec.msgpack.Encoder()
        jd, md = msgspec.json.Decoder(RunState), msgspec.msgpack.Decoder(RunState)
        packed, text = mp.encode(run), js.encode(run)
        rows += [
            (
                "state encode",
                f"msgspec JSON, dataclasses ({len(text)} B)",
                _cpu_us(lambda: js.encode(run), number),
            ),
            (
                "state encode",
                f"msgspec MessagePack ({len(packed)} B)",
                _cpu_us(lambda: mp.encode(run), number),
            ),
        ]
        decode += [
            ("state decode", "msgspec JSON, typed", _cpu_us(lambda: jd.decode(text), number)),
            ("state decode", "msgspec MessagePack, typed", _cpu_us(lambda: md.decode(packed), number)),
        ]
    rows += decode
    records = _records(run)
    for name, record in records.items():
        compiled = compile_writer(catalog().current[name].parsed)
        assert compiled is not None
        slow = _fastavro(name)
        assert compiled(record) == slow(record)
        rows += [
            (f"Avro {name}", "fastavro schemaless_writer", _cpu_us(partial(slow, record), number)),
            (f"Avro {name}", "compiled writer [used]", _cpu_us(partial(compiled, record), number)),
        ]
    writers = {name: _fastavro(name) for name in records}
    rows += [
        (
            "Avro, the four framed",
            "header + fastavro (serde.encode before)",
            _cpu_us(lambda: [b"\0\0\0\0\0" + writers[n](r) for n, r in records.items()], number // 4),
        ),
        (
            "Avro, the four framed",
            "serde.encode now [used]",
            _cpu_us(lambda: [serde.encode(n, r) for n, r in records.items()], number // 4),
        ),
    ]
    namespace = uuid.UUID("6f1c9c62-4d5e-4c39-9a4c-0d1f6e3b7a10")

    rows += [
        (
            "event id",
            "uuid5(run_id:seq)",
            _cpu_us(lambda: str(uuid.uuid5(namespace, f"{run.run_id}:12")), number),
        ),
        (
            "event id",
            "blake2b-128 hex",
            _cpu_us(lambda: hashlib.blake2b(f"{run.run_id}:12".encode(), digest_size=16).hexdigest(), number),
        ),
        ("event id", "run_id:seq [used]", _cpu_us(lambda: f"{run.run_id}:{12}", number)),
    ]
    return rows


def report(rows: list[Row]) -> str:
    lines = ["| group | candidate | CPU µs / call | ÷ first of group |", "| --- | --- | ---: | ---: |"]
    first: dict[str, float] = {}
    for group, name, us in rows:
        base = first.setdefault(group, us)
        lines.append(f"| {group} | {name} | {us:.2f} | {us / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    print(report(measure()))
    print(f"\nload average: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
