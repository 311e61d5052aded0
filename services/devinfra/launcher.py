"""`switchyard dev up | down | status`: bring up Kafka and PostgreSQL, remember what was started.

Each service is taken from the first source that works:
1. the environment (``KAFKA_BOOTSTRAP_SERVERS`` / ``DATABASE_URL``): nothing is started;
2. Docker Compose (``docker-compose.kafka.yml``) when a Docker engine answers;
3. a local process: Kafka from the official jars, PostgreSQL from ``pgserver``.

``up`` is idempotent. The record in ``<state dir>/dev-state.json`` lists only what ``up`` started,
so ``down`` never stops a broker or database it did not start. Processes that ensure a service at
the same time (``make test``'s pytest workers on a machine where nothing runs yet) take turns under
``<state dir>/launcher.lock``: the first starts it, the others find it running.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fasteners

from services.config import Settings
from services.devinfra import kafka_cluster, kafka_secure, paths
from services.devinfra.kafka_local import LauncherError, LocalKafka, broker_answers, wait_for_broker
from services.devinfra.postgres_local import LocalPostgres

Progress = Callable[[str], object]

DOCKER_KAFKA = "127.0.0.1:9092"
DOCKER_DATABASE = "postgresql://switchyard:switchyard@127.0.0.1:5432/switchyard"


@dataclass
class Endpoint:
    """Where one service is, and how it got there."""

    address: str
    source: str  # "environment" | "docker" | "local"
    started_by_up: bool = False
    log_file: str | None = None


@dataclass
class DevState:
    kafka: Endpoint | None = None
    postgres: Endpoint | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def path() -> Path:
        return paths.state_dir() / "dev-state.json"

    @classmethod
    def load(cls) -> DevState:
        try:
            raw = json.loads(cls.path().read_text())
        except (OSError, ValueError):
            return cls()
        return cls(
            kafka=Endpoint(**raw["kafka"]) if raw.get("kafka") else None,
            postgres=Endpoint(**raw["postgres"]) if raw.get("postgres") else None,
        )

    def save(self) -> None:
        self.path().write_text(json.dumps(asdict(self), indent=2))


def docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        return subprocess.run([docker, "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _compose_up(services: list[str], progress: Progress) -> None:
    compose = paths.REPO_ROOT / "docker-compose.kafka.yml"
    progress(f"docker compose up -d {' '.join(services)}")
    subprocess.run(["docker", "compose", "-f", str(compose), "up", "-d", "--wait", *services], check=True)


@contextmanager
def _one_starter_at_a_time() -> Iterator[None]:
    """Hold the state directory's launcher lock: without it, two processes that both find no broker
    start two, and the second dies on the first's ports."""
    with fasteners.InterProcessLock(str(paths.state_dir() / "launcher.lock")):
        yield


def _local_kafka(settings: Settings) -> LocalKafka:
    return LocalKafka(settings.dev_kafka_port, settings.dev_kafka_controller_port)


def ensure_kafka(settings: Settings, progress: Progress = print, use_docker: bool | None = None) -> Endpoint:
    """Return a reachable broker, starting one if none is configured."""
    if settings.kafka_bootstrap_servers:
        wait_for_broker(settings.kafka_bootstrap_servers, timeout_s=30)
        return Endpoint(settings.kafka_bootstrap_servers, "environment")
    with _one_starter_at_a_time():
        return _ensure_kafka_locked(settings, progress, use_docker)


def _ensure_kafka_locked(settings: Settings, progress: Progress, use_docker: bool | None) -> Endpoint:
    state = DevState.load()
    if state.kafka and state.kafka.source != "environment" and broker_answers(state.kafka.address):
        return state.kafka
    if use_docker if use_docker is not None else docker_engine_answers():
        _compose_up(["kafka"], progress)
        wait_for_broker(DOCKER_KAFKA, timeout_s=120)
        endpoint = Endpoint(DOCKER_KAFKA, "docker", started_by_up=True)
    else:
        local = _local_kafka(settings)
        started = local.start(progress)
        endpoint = Endpoint(
            local.bootstrap,
            "local",
            started_by_up=started or bool(state.kafka and state.kafka.started_by_up),
            log_file=str(local.log_file),
        )
    state.kafka = endpoint
    state.save()
    return endpoint


def ensure_postgres(
    settings: Settings, progress: Progress = print, use_docker: bool | None = None
) -> Endpoint:
    """Return a reachable PostgreSQL, starting one if none is configured."""
    if settings.database_url:
        return Endpoint(settings.database_url, "environment")
    with _one_starter_at_a_time():
        return _ensure_postgres_locked(progress, use_docker)


def _ensure_postgres_locked(progress: Progress, use_docker: bool | None) -> Endpoint:
    state = DevState.load()
    if use_docker if use_docker is not None else docker_engine_answers():
        _compose_up(["postgres"], progress)
        endpoint = Endpoint(DOCKER_DATABASE, "docker", started_by_up=True)
    else:
        local = LocalPostgres()
        if not local.running():
            progress(f"starting embedded PostgreSQL (data: {local.data_dir})")
        url, started = local.start()
        endpoint = Endpoint(
            url,
            "local",
            started_by_up=started or bool(state.postgres and state.postgres.started_by_up),
            log_file=str(local.log_file),
        )
    state = DevState.load()
    state.postgres = endpoint
    state.save()
    return endpoint


def up(settings: Settings, progress: Progress = print) -> DevState:
    use_docker = (
        None if settings.kafka_bootstrap_servers and settings.database_url else docker_engine_answers()
    )
    kafka = ensure_kafka(settings, progress, use_docker)
    postgres = ensure_postgres(settings, progress, use_docker)
    return DevState(kafka=kafka, postgres=postgres)


def down(settings: Settings, progress: Progress = print) -> list[str]:
    """Stop only what `up` started. Returns what was stopped."""
    state = DevState.load()
    stopped: list[str] = []
    for name, endpoint in (("kafka", state.kafka), ("postgres", state.postgres)):
        if endpoint is None or not endpoint.started_by_up:
            continue
        if endpoint.source == "docker":
            compose = paths.REPO_ROOT / "docker-compose.kafka.yml"
            subprocess.run(["docker", "compose", "-f", str(compose), "stop", name], check=False)
            stopped.append(f"{name} (docker)")
        elif name == "kafka" and _local_kafka(settings).stop():
            stopped.append(f"kafka ({endpoint.address})")
        elif name == "postgres" and LocalPostgres().stop():
            stopped.append("postgres (embedded)")
    DevState().save()
    return stopped


def wipe(settings: Settings) -> list[str]:
    """Delete the local broker's and the embedded PostgreSQL's data, so the next `up` starts empty.

    Refuses (LauncherError) while either still runs: `down` stops only what `up` started, and a
    server deleted under its own feet would be worse than one left alone."""
    kafka, postgres = _local_kafka(settings), LocalPostgres()
    running = [name for name, up in (("Kafka", kafka.running()), ("PostgreSQL", postgres.running())) if up]
    if running:
        raise LauncherError(
            f"{' and '.join(running)} still running (not started by `switchyard dev up`?): "
            "stop it first, then wipe"
        )
    wiped = []
    for name, path in (("kafka", kafka.home / "data"), ("postgres", postgres.data_dir)):
        if path.exists():
            shutil.rmtree(path)
            wiped.append(f"{name} data ({path})")
    return wiped


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    state = DevState.load()
    report: dict[str, dict[str, Any]] = {}
    kafka = state.kafka or (
        Endpoint(settings.kafka_bootstrap_servers, "environment")
        if settings.kafka_bootstrap_servers
        else None
    )
    report["kafka"] = {"configured": kafka is not None}
    if kafka:
        report["kafka"].update(asdict(kafka), reachable=broker_answers(kafka.address))
    local_kafka = _local_kafka(settings)
    report["kafka"].setdefault("log_file", str(local_kafka.log_file))
    secure = kafka_secure.secure_kafka()  # `dev up --secure` on its default ports, shown only while it runs
    if secure.running():
        report["kafka-secure"] = {
            "configured": True,
            "address": secure.bootstrap,
            "source": "local",
            "reachable": secure.answers(),
            "log_file": str(secure.log_file),
        }
    cluster = kafka_cluster.local_cluster()  # `dev up --brokers 3` on its default ports, while it runs
    if any(cluster.running()):
        report["kafka-cluster"] = {
            "configured": True,
            "address": cluster.bootstrap,
            "source": "local",
            "reachable": cluster.brokers_seen() == kafka_cluster.NODES,
            "nodes_running": sum(cluster.running()),
            "log_file": str(cluster.home / "node-*" / "broker.log"),
        }
    pg = state.postgres or (Endpoint(settings.database_url, "environment") if settings.database_url else None)
    report["postgres"] = {"configured": pg is not None}
    if pg:
        report["postgres"].update(asdict(pg), reachable=_pg_answers(pg.address))
    return report


def _pg_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
        return True
    except Exception:
        return False


def export_lines(state: DevState) -> list[str]:
    """Shell lines that point other tools at the services (eval "$(switchyard dev env)")."""
    lines = []
    if state.kafka:
        lines.append(f"export KAFKA_BOOTSTRAP_SERVERS={state.kafka.address}")
    if state.postgres:
        lines.append(f"export DATABASE_URL='{state.postgres.address}'")
    return lines


__all__ = [
    "DevState",
    "Endpoint",
    "LauncherError",
    "down",
    "ensure_kafka",
    "ensure_postgres",
    "export_lines",
    "status",
    "up",
]
