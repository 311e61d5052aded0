"""Switchyard as a system under test: router, executor and projector as separate processes.

Each instance uses a fresh topic prefix and fresh tenant names, registers its tenants with an
Ed25519 signing key, signs and publishes the workload's workflow for each tenant
(:func:`services.registry.publishing.publish_signed`), then starts::

    python -c "from services.cli import main; main()" router --instance-id r1
    python -c "from services.cli import main; main()" executor --instance-id e1
    python -c "from services.cli import main; main()" projector

with ``SWITCHYARD_TOPIC_PREFIX`` and the other settings in the environment. Runs are triggered
by producing ``TriggerEvent`` records to the tenants' trigger topics, as a tenant app would; the
observations come from the run-history topic (``read_committed``): the first step's start is
the executor's ``started_at`` carried by the first ``step_succeeded`` event, the run is done
when the harness *reads* its ``run_succeeded`` / ``run_failed`` event.

Projector lag is sampled from PostgreSQL during the saturation window: for each sample, how long
ago the harness saw as many runs finish as the database now shows finished.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from confluent_kafka import Consumer, Producer

from benchmarks.harness import Observation, Shape, System, Workload, percentile
from benchmarks.infra import PROCESSES, Child, Processes, unique
from benchmarks.monitor import RootsFn
from services.bus.clients import plain_producer_config
from services.bus.topics import Topics, admin_client, ensure_topics, internal_specs
from services.config import Settings
from services.contracts import serde
from services.registry.publishing import publish_signed
from services.router.records import run_id_for
from services.tenancy.admin import create_trigger_topic, save_tenant
from services.tenancy.config import TenantConfig
from services.workflow.loader import load_definition_text
from services.workflow.signing import (
    KeyEntry,
    Keyring,
    generate_keypair,
    private_key_from_b64,
    sign_definition,
)

WORKFLOW = "bench"
EVENT = "bench.go"
TERMINAL = {"run_succeeded": True, "run_failed": False, "run_cancelled": False}
ENGINE = [sys.executable, "-c", "from services.cli import main; main()"]


def definition_yaml(shape: Shape) -> str:
    """The workflow of a shape, all steps ``noop``."""
    lines = [f"name: {WORKFLOW}", "version: 1", f"trigger: {{event: {EVENT}}}", "steps:"]
    if shape.name == "chain":
        for i in range(shape.steps):
            needs = f", needs: [s{i - 1}]" if i else ""
            lines.append(f"  - {{id: s{i}, action: noop{needs}}}")
    else:
        branches = [f"b{i}" for i in range(shape.width)]
        lines.append("  - {id: s0, action: noop}")
        lines.extend(f"  - {{id: {b}, action: noop, needs: [s0]}}" for b in branches)
        lines.append(f"  - {{id: join, action: noop, needs: [{', '.join(branches)}]}}")
    return "\n".join(lines) + "\n"


class SwitchyardSystem(System):
    """The engine under test. ``wrapper`` (argv prefix) runs the services under a profiler."""

    name = "switchyard"
    infra = ("kafka", "postgres")

    def __init__(
        self,
        bootstrap: str,
        database_url: str | None,
        *,
        partitions: int,
        commit_interval_ms: int,
        processes: Processes = PROCESSES,
        wrapper: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        catch_up_timeout_s: float = 600.0,
        instances: int = 1,
    ) -> None:
        """``catch_up_timeout_s``: how long a saturation window waits, after the last run is
        done, for the projector to have written every run to PostgreSQL. ``instances``: routers
        and executors started (each role's processes share one consumer group; the internal
        topics need at least that many partitions for all of them to work)."""
        if instances < 1 or instances > partitions:
            raise ValueError(f"instances must be 1..partitions ({partitions}), not {instances}")
        self.instances = instances
        self.bootstrap = bootstrap
        self.database_url = database_url
        self.partitions = partitions
        self.commit_interval_ms = commit_interval_ms
        self.processes = processes
        self.wrapper = wrapper
        self.extra_env = extra_env or {}
        self.catch_up_timeout_s = catch_up_timeout_s
        self.children: dict[str, Child] = {}
        self.tenants: list[str] = []
        self.topics = Topics("wf")
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._keys: dict[str, str] = {}
        self._keys_lock = threading.Lock()
        self._first_step = "s0"
        self._lag_samples: list[tuple[float, int]] = []
        self._lag_base = 0
        self._lag_stop = threading.Event()
        self._lag_thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, workload: Workload) -> None:
        prefix = unique("bench")
        self.topics = Topics(prefix)
        settings = Settings(
            kafka_bootstrap_servers=self.bootstrap,
            topic_prefix=prefix,
            internal_partitions=self.partitions,
            commit_interval_ms=self.commit_interval_ms,
        )
        ensure_topics(admin_client(settings), internal_specs(settings))
        private, public = generate_keypair()
        stem = unique("t")
        self.tenants = (
            [stem] if workload.tenants == 1 else [f"{stem}-{i:02d}" for i in range(workload.tenants)]
        )
        definition = load_definition_text(definition_yaml(workload.shape), filename="bench.yaml")

        def register(tenant: str) -> None:
            config = TenantConfig(
                tenant=tenant,
                max_concurrent_runs=1_000_000,
                trigger_rate=1e6,
                trigger_burst=1_000_000,
                max_pending_runs=1_000_000,
                keyring=Keyring(tenant=tenant, keys=[KeyEntry(key_id="k1", public_key=public)]),
            )
            create_trigger_topic(settings, config)
            save_tenant(settings, config, wait_visible_s=30)
            signed = sign_definition(
                definition, tenant=tenant, key_id="k1", private_key=private_key_from_b64(private)
            )
            publish_signed(settings, signed, "benchmarks")

        with ThreadPoolExecutor(max_workers=10) as pool:  # 20 tenants one by one take a minute
            list(pool.map(register, self.tenants))
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": unique("bench-observer-"),
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
            }
        )
        self._consumer.subscribe([self.topics.events])
        self._producer = Producer(plain_producer_config(settings, **{"linger.ms": 1}))
        env = {
            **_base_env(),
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "SWITCHYARD_TOPIC_PREFIX": prefix,
            "SWITCHYARD_INTERNAL_PARTITIONS": str(self.partitions),
            "SWITCHYARD_COMMIT_INTERVAL_MS": str(self.commit_interval_ms),
            "SWITCHYARD_LOG_LEVEL": "WARNING",
            **self.extra_env,
        }
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        roles: list[tuple[str, list[str]]] = []
        for n in range(1, self.instances + 1):
            suffix = "" if n == 1 else f"-{n}"
            roles.append((f"router{suffix}", ["router", "--instance-id", f"r{n}"]))
            roles.append((f"executor{suffix}", ["executor", "--instance-id", f"e{n}"]))
        if self.database_url:
            roles.append(("projector", ["projector"]))
        for role, args in roles:
            argv = [*(self.wrapper or ENGINE), *args]
            self.children[role] = self.processes.start(f"{prefix}-{role}", argv, env=env)

    def stop(self) -> None:
        self._lag_stop.set()
        if self._lag_thread is not None:
            self._lag_thread.join(5)
            self._lag_thread = None
        for child in self.children.values():
            self.processes.stop(child)
        self.children.clear()
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        self._producer = None

    def services(self) -> dict[str, RootsFn]:
        """One resource row per role: a role's instances (``router``, ``router-2``, …) add up."""
        by_role: dict[str, list[Child]] = {}
        for name, child in self.children.items():
            by_role.setdefault(name.split("-")[0], []).append(child)
        return {role: _pids_of_all(children) for role, children in by_role.items()}

    # --- driving --------------------------------------------------------------------------------

    def send(self, key: str, tenant: int) -> None:
        assert self._producer is not None
        name = self.tenants[tenant]
        with self._keys_lock:
            self._keys[run_id_for(name, WORKFLOW, key)] = key
        record = {
            "event_type": EVENT,
            "data_json": "{}",
            "idempotency_key": key,
            "correlation_id": None,
            "occurred_at": int(time.time() * 1000),
        }
        topic = self.topics.tenant_triggers(name)
        while True:
            try:
                self._producer.produce(topic, key=key, value=serde.encode("TriggerEvent", record))
                break
            except BufferError:
                self._producer.poll(0.01)
        self._producer.poll(0)

    def flush(self) -> None:
        assert self._producer is not None
        if self._producer.flush(60) != 0:
            raise RuntimeError("triggers not delivered within 60 s")

    def poll(self, timeout_s: float) -> list[Observation]:
        assert self._consumer is not None
        self._check_alive()
        observations = []
        for msg in self._consumer.consume(2000, timeout_s):
            if msg.error():
                continue
            _, event = serde.decode(msg.value(), expected="RunEvent")
            kind = event["type"]
            if kind == "step_succeeded" and event["step_id"] == self._first_step:
                detail = json.loads(event["detail_json"] or "{}")
                started = detail.get("started_at") or event["at"]
                obs = self._observation("first", event["run_id"], started / 1000)
            elif kind in TERMINAL:
                obs = self._observation("done", event["run_id"], time.time(), TERMINAL[kind])
            else:
                continue
            if obs is not None:
                observations.append(obs)
        return observations

    def _observation(self, kind: str, run_id: str, at: float, ok: bool = True) -> Observation | None:
        with self._keys_lock:
            key = self._keys.get(run_id)
        if key is None:
            return None
        return Observation("first" if kind == "first" else "done", key, at, ok)

    def _check_alive(self) -> None:
        for role, child in self.children.items():
            if not child.alive():
                raise RuntimeError(
                    f"switchyard {role} exited ({child.popen.returncode}):\n{child.log_tail()}"
                )

    # --- projector lag --------------------------------------------------------------------------

    def window_start(self) -> None:
        if not self.database_url or "projector" not in self.children:
            return
        self._lag_samples = []
        self._lag_base = 0
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            self._lag_base = self._count_finished(conn)  # the warm-up runs
        self._lag_stop.clear()
        self._lag_thread = threading.Thread(target=self._sample_lag, name="projector-lag", daemon=True)
        self._lag_thread.start()

    def _count_finished(self, conn: psycopg.Connection[Any]) -> int:
        row = conn.execute(
            "select count(*) from runs where tenant = any(%s) and finished_at is not null", (self.tenants,)
        ).fetchone()
        return (int(row[0]) if row else 0) - self._lag_base

    def _sample_lag(self) -> None:
        assert self.database_url is not None
        try:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                while not self._lag_stop.wait(0.1):
                    self._lag_samples.append((time.time(), self._count_finished(conn)))
        except psycopg.Error:
            return  # the database went away (teardown): no more samples

    def window_stop(self, done_times: list[float]) -> dict[str, Any]:
        if self._lag_thread is None or self.database_url is None:
            return {}
        self._lag_stop.set()
        self._lag_thread.join(5)
        self._lag_thread = None
        # After the harness saw the last run done: wait until the database shows all of them.
        caught_up = None
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            deadline = time.monotonic() + self.catch_up_timeout_s
            while time.monotonic() < deadline:
                count = self._count_finished(conn)
                self._lag_samples.append((time.time(), count))
                if count >= len(done_times):
                    caught_up = time.time()
                    break
                time.sleep(0.05)
        lags = []
        for at, count in self._lag_samples:
            if not done_times or at < done_times[0]:
                continue
            # The oldest run the harness saw done that the database does not show yet.
            behind = count < len(done_times) and done_times[count] <= at
            lags.append(at - done_times[count] if behind else 0.0)
        return {
            "projector_lag_s_p50": round(percentile(lags, 50), 3),
            "projector_lag_s_max": round(max(lags, default=0.0), 3),
            "projector_catch_up_s": round(caught_up - done_times[-1], 3) if caught_up else None,
            "projector_caught_up_at": caught_up,
        }


def _base_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env.pop("SWITCHYARD_TOPIC_PREFIX", None)
    return env


__all__ = ["SwitchyardSystem", "definition_yaml"]


def _pids_of_all(children: list[Child]) -> RootsFn:
    """A roots function (see :mod:`benchmarks.monitor`) for several child processes."""
    return lambda: [child.pid for child in children]
