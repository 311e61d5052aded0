"""`switchyard demo`: the README's main job — the real engine on the example workflows, end to end.

It brings up Kafka and PostgreSQL (or uses the configured ones), creates the internal topics and
the database schema, registers a ``demo`` tenant with a fresh signing key, signs and publishes
the example workflows, runs router + executor + projector in this process, fires the example
triggers and prints the resulting runs from PostgreSQL.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import typer
from confluent_kafka import Producer
from rich.table import Table

from services.bus.clients import plain_producer_config
from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.commands import options
from services.commands.text import add_row, console, esc
from services.config import Settings, get_settings
from services.contracts import serde
from services.contracts.records import JsonObject, TriggerEvent
from services.contracts.vocabulary import RUN_TERMINAL
from services.control.keys import OperatorKey, configured_key
from services.devinfra import launcher, paths
from services.package_data import examples_dir
from services.runtime import ServiceFn, install_signal_handlers, run_services, setup_logging
from services.tenancy.admin import create_trigger_topic, read_tenants, save_tenant
from services.tenancy.config import TenantConfig
from services.workflow.keyfiles import write_keypair
from services.workflow.loader import load_definition_file
from services.workflow.signing import (
    KeyEntry,
    Keyring,
    generate_keypair,
    private_key_from_b64,
    sign_definition,
)

out = console()
err = console(stderr=True)
TENANT = "demo"
KEY_ID = "demo-key-1"
OPERATOR_KEY_ID = "operator@demo"
EXAMPLES = examples_dir()
DEMO_SCOPES = ("firm_data:read", "firm_data:write", "email:send")


def _step(msg: str) -> None:
    err.print(f"[cyan]•[/] {esc(msg)}")


def _demo_keys() -> tuple[str, str]:
    key_file = paths.state_dir() / "demo-signing-key.json"
    if key_file.exists():
        data = json.loads(key_file.read_text())
        return data["private"], data["public"]
    private, public = generate_keypair()
    key_file.write_text(json.dumps({"private": private, "public": public}))
    key_file.chmod(0o600)
    return private, public


def _operator_key() -> tuple[Path, str]:
    """The demo operator's key pair (made once, in the dev state directory): (private key file,
    public key), so that the demo's runs can be replayed and cancelled with signed commands."""
    directory = paths.state_dir() / "demo-operator"
    private_path = directory / f"{OPERATOR_KEY_ID}.key"
    public_path = directory / f"{OPERATOR_KEY_ID}.pub"
    if not (private_path.exists() and public_path.exists()):
        for stale in (private_path, public_path):
            stale.unlink(missing_ok=True)
        write_keypair(directory, OPERATOR_KEY_ID)
    return private_path, public_path.read_text(encoding="ascii").strip()


def _setup_tenant(settings: Settings, public: str, operator_public: str) -> None:
    existing = read_tenants(settings).get(TENANT)
    keyring = Keyring(
        tenant=TENANT,
        keys=[
            KeyEntry(key_id=KEY_ID, public_key=public),
            KeyEntry(key_id=OPERATOR_KEY_ID, public_key=operator_public, role="operator"),
        ],
    )
    base = existing or TenantConfig(tenant=TENANT)
    # The examples read and write firm data and send email; a tenant saved by an older demo may
    # lack a scope added since.
    scopes = sorted({*base.scopes, *DEMO_SCOPES})
    config = base.model_copy(update={"keyring": keyring, "status": "active", "scopes": scopes})
    create_trigger_topic(settings, config)
    if existing != config:
        save_tenant(settings, config, wait_visible_s=10)


def _publish_examples(settings: Settings, private: str, known_actions: set[str]) -> dict[str, str]:
    """Sign and publish every example whose actions are installed; returns name -> trigger event."""
    from services.registry.publishing import publish_signed

    names: dict[str, str] = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        definition = load_definition_file(path)
        missing = {s.action for s in definition.steps if s.action is not None} - known_actions
        if missing:
            _step(f"skipping {path.name}: actions {sorted(missing)} are not installed")
            continue
        signed = sign_definition(
            definition, tenant=TENANT, key_id=KEY_ID, private_key=private_key_from_b64(private)
        )
        publish_signed(settings, signed, "switchyard-demo")
        names[definition.name] = definition.trigger.event
    return names


def _fire(settings: Settings, triggers: list[JsonObject]) -> list[str]:
    """Send the example triggers; returns their idempotency keys."""
    producer = Producer(plain_producer_config(settings))
    topic = Topics(settings.topic_prefix).tenant_triggers(TENANT)
    for trigger in triggers:
        record: TriggerEvent = {
            "event_type": trigger["event_type"],
            "data_json": json.dumps(trigger["data"]),
            "idempotency_key": trigger["idempotency_key"],
            "correlation_id": None,
            "occurred_at": int(time.time() * 1000),
        }
        producer.produce(topic, key=trigger["idempotency_key"], value=serde.encode("TriggerEvent", record))
    producer.flush(30)
    return [t["idempotency_key"] for t in triggers]


def _wait_for_runs(
    settings: Settings,
    keys: list[str],
    expected: int,
    timeout_s: float,
    follow_ups: FollowUps | None = None,
) -> list[dict[str, object]]:
    import psycopg

    assert settings.database_url
    deadline = time.monotonic() + timeout_s
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        with psycopg.connect(settings.database_url) as conn:
            cur = conn.execute(
                "select run_id, workflow, version, state, idempotency_key, correlation_id, "
                "extract(epoch from (finished_at - created_at)) as seconds, "
                "(select count(*) from steps s where s.run_id = r.run_id) as steps "
                "from runs r where tenant = %s and idempotency_key = any(%s) order by created_at",
                (TENANT, keys),
            )
            names = [c.name for c in cur.description or []]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            if follow_ups is not None:
                follow_ups.act(conn, [str(r["run_id"]) for r in rows if r["state"] not in RUN_TERMINAL])
        if len(rows) >= expected and all(r["state"] in RUN_TERMINAL for r in rows):
            return rows
        time.sleep(0.3)
    return rows


class FollowUps:
    """What the outside world does while the example runs wait (``follow-ups.json``): once a run of
    ``workflow`` is waiting at ``step``, send an event to the tenant's topic (a ``wait_for``) or a
    signed approval decision (an ``approval``), once per run and step."""

    def __init__(self, settings: Settings, specs: list[JsonObject], key: OperatorKey, suffix: str) -> None:
        self.settings = settings
        self.specs = specs
        self.key = key
        self.suffix = suffix
        self.done: set[tuple[str, str]] = set()

    def act(self, conn: Any, open_runs: list[str]) -> None:
        if not open_runs:
            return
        waiting = conn.execute(
            "select r.run_id, r.workflow, s.step_id from runs r join steps s using (run_id) "
            "where r.run_id = any(%s) and s.state = 'running'",
            (open_runs,),
        ).fetchall()
        for run_id, workflow, step_id in waiting:
            for spec in self.specs:
                if (spec["workflow"], spec["step"]) != (workflow, step_id) or (run_id, step_id) in self.done:
                    continue
                self.done.add((run_id, step_id))
                _step(f"{spec.get('about', 'follow-up')}: run {run_id[:8]} step {step_id}")
                if "send" in spec:
                    event = spec["send"]
                    _fire(
                        self.settings,
                        [{**event, "idempotency_key": f"{event['event_type']}-{run_id[:8]}-{self.suffix}"}],
                    )
                if "approve" in spec:
                    self._approve(run_id, step_id, spec["approve"])

    def _approve(self, run_id: str, step_id: str, decision: JsonObject) -> None:
        from services.control.commands import ControlSender, command

        text = str(decision.get("comment") or "")
        cmd = command(
            "approve",
            TENANT,
            run_id,
            self.key.key_id,
            f"{decision['decision']}: {text}",
            step_id=step_id,
            key=self.key,
            decision=str(decision["decision"]),
            comment=text,
        )
        sender = ControlSender(self.settings)
        sender.send(cmd)
        sender.flush()


def demo(
    keep_running: bool = typer.Option(False, help="Keep the engine running after the demo (Ctrl-C stops)."),
    timeout: float = typer.Option(
        90.0, callback=options.finite_seconds, help="Seconds to wait for the example runs to finish."
    ),
) -> None:
    """Run the engine on the example workflows: infrastructure, tenant, signed workflows, triggers."""
    from services.executor.plugins import ActionRegistry
    from services.executor.service import run_executor
    from services.projector.db import upgrade_database
    from services.projector.runner import run_projector
    from services.router.service import run_router

    base = get_settings()
    try:
        state = launcher.up(base, _step)
    except launcher.LauncherError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    assert state.kafka and state.postgres
    # Actions read their own connections from the environment (e.g. firm.update_record's database).
    os.environ.setdefault("KAFKA_BOOTSTRAP_SERVERS", state.kafka.address)
    os.environ.setdefault("DATABASE_URL", state.postgres.address)
    settings = base.model_copy(
        update={
            "kafka_bootstrap_servers": state.kafka.address,
            "database_url": state.postgres.address,
            "log_format": base.log_format if base.log_level != "INFO" else "text",
            "log_level": "WARNING" if base.log_level == "INFO" else base.log_level,
            "instance_id": base.instance_id or "demo",
        }
    )
    setup_logging(settings)
    _step("ensuring topics and database schema")
    ensure_topics(admin_client(settings), internal_specs(settings), settings.replication_factor)
    upgrade_database(settings.database_url or "")
    private, public = _demo_keys()
    operator_key_file, operator_public = _operator_key()
    _step(f"registering tenant {TENANT!r} with signing key {KEY_ID} and operator key {OPERATOR_KEY_ID}")
    _setup_tenant(settings, public, operator_public)
    known = set(ActionRegistry.load().names())
    published = _publish_examples(settings, private, known)
    _step(f"published signed workflows: {', '.join(sorted(published))}")

    stop = threading.Event()
    install_signal_handlers(stop)
    services: dict[str, ServiceFn] = {
        "router": run_router,
        "executor": run_executor,
        "projector": run_projector,
    }
    engine = threading.Thread(target=run_services, args=(settings, services, stop), name="engine")
    engine.start()
    # Fresh idempotency keys per demo: the same key would (rightly) not start a second run.
    demo_id = uuid.uuid4().hex[:6]
    triggers = [
        {**t, "idempotency_key": f"{t['idempotency_key']}-{demo_id}"}
        for t in json.loads((EXAMPLES / "triggers.json").read_text())
    ]
    expected = sum(1 for t in triggers if t["event_type"] in published.values())
    keys = _fire(settings, triggers)
    _step(
        f"sent {len(keys)} triggers to {Topics(settings.topic_prefix).tenant_triggers(TENANT)}; "
        f"waiting for {expected} runs"
    )
    started = time.monotonic()
    follow_ups = FollowUps(
        settings,
        json.loads((EXAMPLES / "follow-ups.json").read_text()),
        configured_key(settings, str(operator_key_file), OPERATOR_KEY_ID),
        demo_id,
    )
    rows = _wait_for_runs(settings, keys, expected, timeout, follow_ups)
    table = Table(
        "run",
        "workflow",
        "state",
        "steps",
        "seconds",
        "idempotency key",
        "correlation id",
        title=f"Runs of tenant {TENANT} (from PostgreSQL)",
    )
    for row in rows:
        add_row(
            table,
            str(row["run_id"])[:8],
            f"{row['workflow']} v{row['version']}",
            str(row["state"]),
            str(row["steps"]),
            f"{float(str(row['seconds'] or 0)):.2f}",
            str(row["idempotency_key"]),
            str(row["correlation_id"])[:8],
        )
    out.print(table)
    finished = [r for r in rows if r["state"] in RUN_TERMINAL]
    err.print(
        f"{len(finished)}/{len(rows)} runs finished in {time.monotonic() - started:.1f}s. "
        "Inspect one with: switchyard runs show RUN_ID"
    )
    err.print(
        "Replay one while the engine runs (`switchyard run` in another terminal; commands are signed "
        "with the demo operator's key): switchyard replay RUN_ID --from-step STEP --reason 'try again' "
        f"--key {esc(operator_key_file)}",
        soft_wrap=True,
    )
    err.print(
        "Operator console: `switchyard console user add you@demo --global` (prints a token), then "
        "`switchyard console` and open http://127.0.0.1:8480/"
    )
    if keep_running and not stop.is_set():
        err.print("engine running; Ctrl-C to stop")
        while engine.is_alive() and not stop.is_set():
            engine.join(0.5)
    stop.set()
    engine.join()
    if len(finished) < expected:
        raise typer.Exit(1)
