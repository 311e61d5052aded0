"""Signed operator commands on a real broker and PostgreSQL: what intake refuses (unsigned, forged,
stale, another tenant's key), a command id applied once, and the real CLI end to end (keygen,
tenant update --operator-key, replay and cancel signed with --key, a core refusal reported fast).

Every decision is read back from ``control_commands``, as the CLI and the console read it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Unpack

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.contracts.records import ControlCommand
from services.control.commands import ControlSender, command
from services.registry.tenants import tenants_table
from services.tenancy.admin import read_tenants
from tests.fixtures.engine import Engine, register_tenant
from tests.fixtures.operators import signed
from tests.fixtures.records import ControlCommandFields

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """Already migrated (a template copy): the projector's start-up migration is a no-op here."""
    return migrated_database_url


FLAKY = """
name: flaky
version: 1
trigger: {event: go}
steps:
  - {id: call, action: fail, inputs: {error_kind: upstream_down, fail_attempts: 1}, retry: {max_attempts: 1}}
"""
SLOW = """
name: slow
version: 1
trigger: {event: slow}
steps:
  - {id: wait, action: sleep, inputs: {seconds: 120}, timeout: 300}
"""


def start(engine_factory: Callable[..., Engine], database_url: str) -> Engine:
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    eng = engine_factory(tenant_limits={"operators": ["ops@acme"]}, database_url=database_url)
    for name, fn, kwargs in (
        ("router", run_router, {"instance_id": "r1"}),
        ("executor", run_executor, {"instance_id": "e1"}),
        ("projector", run_projector, {}),
    ):
        assert eng.start(name, fn, **kwargs).wait(60), name
    eng.publish(FLAKY)
    eng.publish(SLOW)
    return eng


def failed_run(eng: Engine, key: str) -> str:
    run_id = eng.run_id("flaky", eng.trigger("go", {}, key=key))
    assert eng.wait_terminal([run_id])[run_id][-1]["type"] == "run_failed"
    return run_id


def send(eng: Engine, *commands: ControlCommand) -> None:
    sender = ControlSender(eng.settings)
    for cmd in commands:
        sender.send(cmd)
    sender.flush()


def decisions(url: str, ids: list[str], timeout_s: float = 30) -> dict[str, tuple[str, str, str | None]]:
    """(outcome, requester, refusal) of each command id, once all are recorded."""
    deadline = time.monotonic() + timeout_s
    rows: dict[str, tuple[str, str, str | None]] = {}
    while time.monotonic() < deadline:
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "select command_id, outcome, requester, refusal from control_commands "
                "where command_id = any(%s)",
                (ids,),
            ).fetchall()
        rows = {r[0]: (r[1], r[2], r[3]) for r in found}
        if len(rows) == len(ids):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"decisions recorded: {rows}; expected {len(ids)} within {timeout_s}s")


def sql(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, args).fetchall()


def test_signed_commands_end_to_end(
    engine_factory: Callable[..., Engine], database_url: str, tmp_path: Path
) -> None:
    """One engine (router, executor, projector) for both parts: engines are what costs here."""
    eng = start(engine_factory, database_url)
    refusals_are_specific_and_recorded_and_an_id_applies_once(eng, database_url)
    the_cli_signs_replay_and_cancel_and_reports_a_core_refusal(eng, database_url, tmp_path)


def refusals_are_specific_and_recorded_and_an_id_applies_once(eng: Engine, database_url: str) -> None:
    public = read_tenants(eng.settings)["acme"].keyring_or_empty().keys[0].public_key
    register_tenant(eng.settings, "beta", public, operators=["ops@beta"])
    run_id = failed_run(eng, "refusals")

    def replay(**fields: Unpack[ControlCommandFields]) -> ControlCommand:
        return {**command("replay_run", "acme", run_id, "ops@acme", "upstream fixed"), **fields}

    unsigned = replay()
    forged = signed(replay(), "ops@acme", Ed25519PrivateKey.generate())
    tampered: ControlCommand = {**signed(replay(), "ops@acme"), "reason": "something else"}
    stale = signed(replay(issued_at=int(time.time() * 1000) - 3_600_000), "ops@acme")
    foreign = signed(replay(), "ops@beta")  # a real operator key, of tenant beta
    good = signed(replay(), "ops@acme")
    send(eng, unsigned, forged, tampered, stale, foreign, good)
    send(eng, good)  # the same signed command again: a replay attack, or a resend

    got = decisions(
        database_url, [c["command_id"] for c in (unsigned, forged, tampered, stale, foreign, good)]
    )
    assert got[good["command_id"]] == ("accepted", "ops@acme", None)
    for cmd, reason in (
        (unsigned, "unsigned_command: "),
        (forged, "bad_signature: "),
        (tampered, "bad_signature: "),
        (stale, "stale_command: "),
        (foreign, "foreign_key: "),
    ):
        outcome, _, refusal = got[cmd["command_id"]]
        assert outcome == "refused" and refusal is not None and refusal.startswith(reason), (reason, refusal)
    assert got[forged["command_id"]][1] == "unverified: ops@acme"  # never the forged name as such
    assert re.search(
        r"issued 36\d\d s ago; commands are accepted within 300 s", str(got[stale["command_id"]][2])
    )

    events = eng.wait_events(run_id, lambda evs: [e["type"] for e in evs].count("control_refused") == 1)
    duplicate = next(e for e in events if e["type"] == "control_refused")
    assert duplicate["detail"]["command_id"] == good["command_id"]
    assert duplicate["detail"]["refusal"].startswith("duplicate_command: ")
    assert [e["type"] for e in events].count("run_replayed") == 1  # applied once, not twice
    # the audit keeps the duplicate's refusal in the run's history, the first decision in the table
    # (read once the projector has caught up with the history just read from Kafka)
    deadline = time.monotonic() + 30
    while True:
        rows = sql(
            database_url,
            "select type from run_events where run_id = %s and type like 'control_%%' order by seq",
            run_id,
        )
        if len(rows) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # polling PostgreSQL, bounded by the deadline above
    assert [r[0] for r in rows] == ["control_accepted", "control_refused"]


def cli(eng: Engine, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": str(eng.settings.kafka_bootstrap_servers),
        "DATABASE_URL": url,
        "SWITCHYARD_TOPIC_PREFIX": eng.settings.topic_prefix,
        "SWITCHYARD_INTERNAL_PARTITIONS": str(eng.settings.internal_partitions),
    }
    env.pop("SWITCHYARD_OPERATOR_KEY_FILE", None)
    return subprocess.run(
        [sys.executable, "-c", "from services.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def the_cli_signs_replay_and_cancel_and_reports_a_core_refusal(
    eng: Engine, database_url: str, tmp_path: Path
) -> None:
    keygen = cli(
        eng, database_url, "operator", "keygen", "--key-id", "alice@acme", "--out-dir", str(tmp_path)
    )
    assert keygen.returncode == 0, keygen.stderr
    public = (tmp_path / "alice@acme.pub").read_text().strip()
    assert keygen.stdout.strip() == public and "--operator-key alice@acme=" in keygen.stderr
    update = cli(
        eng,
        database_url,
        "tenant",
        "update",
        "acme",
        "--operator-key",
        f"alice@acme={tmp_path}/alice@acme.pub",
    )
    assert update.returncode == 0, update.stderr
    table = tenants_table(eng.settings).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            config = table.get("acme")
            if config is not None and config.keyring_or_empty().get("alice@acme") is not None:
                break
            time.sleep(0.05)
    finally:
        table.stop()
    key = str(tmp_path / "alice@acme.key")

    run_id = failed_run(eng, "cli")
    replay = cli(eng, database_url, "replay", run_id, "--reason", "upstream fixed", "--key", key)
    assert replay.returncode == 0, replay.stderr
    assert "accepted:" in replay.stderr
    eng.wait_events(run_id, lambda evs: any(e["type"] == "run_succeeded" for e in evs))

    slow = eng.run_id("slow", eng.trigger("slow", {}, key="cli-slow"))
    eng.wait_events(slow, lambda evs: any(e["type"] == "step_scheduled" for e in evs))
    cancel = cli(eng, database_url, "cancel", slow, "--reason", "client withdrew", "--key", key)
    assert cancel.returncode == 0, cancel.stderr
    eng.wait_events(slow, lambda evs: any(e["type"] == "run_cancelled" for e in evs))
    assert sql(database_url, "select requester, outcome from control_commands where run_id = %s", slow) == [
        ("alice@acme", "accepted")
    ]

    # Refused by the router core (no such run), not by intake: recorded, so the CLI reports it
    # (exit 1 with the reason) instead of waiting out --wait and saying it saw no outcome (exit 3).
    started = time.monotonic()
    ghost = cli(
        eng,
        database_url,
        "replay",
        "no-such-run",
        "--tenant",
        "acme",
        "--reason",
        "x",
        "--key",
        key,
        "--wait",
        "20",
    )
    print(
        f"core refusal reported by the CLI after {time.monotonic() - started:.1f}s (process start included)"
    )
    assert ghost.returncode == 1, ghost.stderr
    assert "refused:" in ghost.stderr and "no run no-such-run of tenant acme" in ghost.stderr
