"""`switchyard router | executor | projector | run`: the engine's processes (the projector migrates
the database as it starts); `topics`, `db`, `trigger`: their plumbing."""

from __future__ import annotations

import json
import threading
import time
import uuid

import typer
from confluent_kafka import KafkaException, Producer

from services.bus.clients import plain_producer_config
from services.bus.topics import (
    ReplicationUnsafe,
    Topics,
    admin_client,
    check_replication,
    ensure_topics,
    internal_specs,
)
from services.commands.connections import kafka_settings
from services.commands.text import console, esc
from services.config import get_settings
from services.contracts import serde
from services.runtime import install_signal_handlers, run_services, setup_logging

err = console(stderr=True)
INSTANCE_HELP = "Stable id of this instance (keeps its transactional id across restarts, so a restart fences "
INSTANCE_HELP += "its predecessor at once). Default: SWITCHYARD_INSTANCE_ID, else hostname-pid."


def _serve(services: dict[str, object], instance_id: str | None) -> None:
    settings = kafka_settings()
    if instance_id:
        settings = settings.model_copy(update={"instance_id": instance_id})
    setup_logging(settings)
    stop = threading.Event()
    install_signal_handlers(stop)
    run_services(settings, services, stop)  # type: ignore[arg-type]


def router(instance_id: str | None = typer.Option(None, help=INSTANCE_HELP)) -> None:
    """Run the router: intake (triggers, control → inbox) and core (run state, step commands, history)."""
    from services.router.service import run_router

    _serve({"router": run_router}, instance_id)


def executor(instance_id: str | None = typer.Option(None, help=INSTANCE_HELP)) -> None:
    """Run a stateless step executor: step commands → actions → step results."""
    from services.executor.service import run_executor

    _serve({"executor": run_executor}, instance_id)


def projector() -> None:
    """Run the state projector: run history → PostgreSQL (exactly once, offsets stored with the data)."""
    from services.projector.runner import run_projector

    settings = kafka_settings()
    if not settings.database_url:
        err.print("[red]error:[/] DATABASE_URL is not set (`switchyard dev up` starts a local PostgreSQL).")
        raise typer.Exit(2)
    _serve({"projector": run_projector}, None)  # it migrates the database as it starts


def run(instance_id: str | None = typer.Option(None, help=INSTANCE_HELP)) -> None:
    """Run router, executor and projector in one process (development)."""
    from services.executor.service import run_executor
    from services.projector.runner import run_projector
    from services.router.service import run_router

    settings = kafka_settings()
    services: dict[str, object] = {"router": run_router, "executor": run_executor}
    if settings.database_url:
        services["projector"] = run_projector  # it migrates the database as it starts
    else:
        err.print("[yellow]DATABASE_URL is not set: running without the projector[/]")
    _serve(services, instance_id)


topics_app = typer.Typer(help="Create and check the internal Kafka topics.", no_args_is_help=True)


@topics_app.command("ensure")
def topics_ensure() -> None:
    """Create every internal topic that is missing (partitions, replication and configs from the
    settings); refuses when the cluster cannot keep exactly-once with the replication settings."""
    settings = kafka_settings()
    specs = internal_specs(settings)
    admin = admin_client(settings)
    try:
        for warning in check_replication(admin, settings):
            err.print(f"[yellow]warning:[/] {esc(warning)}")
        created = ensure_topics(admin, specs)
    except ReplicationUnsafe as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    except KafkaException as exc:
        # e.g. TOPIC_AUTHORIZATION_FAILED on a secured cluster: creating topics is the admin's job.
        err.print(
            f"[red]error:[/] the broker refused: {esc(exc.args[0] if exc.args else exc)}\n"
            "creating topics needs a principal allowed to create them (on a secured cluster the "
            "admin: `switchyard dev env --secure --role admin`, see `switchyard acl plan`)"
        )
        raise typer.Exit(1) from exc
    for spec in specs:
        mark = "created" if spec.name in created else "exists"
        err.print(
            f"{mark:8} {spec.name}  partitions={spec.partitions} replication={spec.replication}"
            f" {spec.config or ''}"
        )


def trigger(
    tenant: str = typer.Option(..., help="Tenant id: the trigger goes to that tenant's trigger topic."),
    event: str = typer.Option(..., help="Event type, e.g. client.created."),
    data: str = typer.Option("{}", help="The business payload, a JSON document."),
    key: str | None = typer.Option(None, help="Idempotency key: the same key never starts a second run."),
    correlation_id: str | None = typer.Option(None, help="Correlation id (default: derived from the key)."),
) -> None:
    """Produce one trigger event to a tenant's trigger topic (as any tenant app would)."""
    settings = kafka_settings()
    try:
        json.loads(data)
    except ValueError as exc:
        err.print(f"[red]error:[/] --data is not valid JSON: {esc(exc)}")
        raise typer.Exit(2) from exc
    record = {
        "event_type": event,
        "data_json": data,
        "idempotency_key": key or str(uuid.uuid4()),
        "correlation_id": correlation_id,
        "occurred_at": int(time.time() * 1000),
    }
    topic = Topics(settings.topic_prefix).tenant_triggers(tenant)
    # never create a tenant's topic by producing to it: tenants are made by `switchyard tenant create`
    producer = Producer(plain_producer_config(settings, **{"allow.auto.create.topics": False}))
    problem = missing_topic_problem(producer, topic, tenant, settings.topic_prefix)
    if problem:
        err.print(f"[red]error:[/] {esc(problem)}")
        raise typer.Exit(1)
    failures: list[str] = []
    producer.produce(
        topic,
        key=str(record["idempotency_key"]),
        value=serde.encode("TriggerEvent", record),
        on_delivery=lambda e, m: failures.append(str(e)) if e else None,
    )
    producer.flush(30)
    if failures:
        err.print(
            f"[red]error:[/] could not produce to {topic}: {failures[0]} "
            f"(does the tenant exist? `switchyard tenant show {tenant}`)"
        )
        raise typer.Exit(1)
    err.print(f"sent {esc(event)} to {esc(topic)} with key {esc(record['idempotency_key'])}")


def missing_topic_problem(
    client: Producer, topic: str, tenant: str, prefix: str, timeout_s: float = 5.0
) -> str:
    """Why ``topic`` cannot take a record now, from one metadata request, else ``""``.

    Producing to a missing topic would only fail after ``message.timeout.ms`` (30 s and more), so
    the CLI asks first, for this topic only (a cluster may hold thousands); ``client`` must not
    auto-create topics (``allow.auto.create.topics=false``).
    """
    try:
        metadata = client.list_topics(topic, timeout=timeout_s).topics.get(topic)
    except KafkaException as exc:
        return f"the broker did not answer within {timeout_s:g}s ({exc.args[0] if exc.args else exc})"
    if metadata is None or metadata.error is not None or not metadata.partitions:
        return (
            f"topic {topic} does not exist: no tenant {tenant!r} under the topic prefix {prefix!r}. "
            f"See `switchyard tenant list`; create it with `switchyard tenant create {tenant} …`, "
            "or set SWITCHYARD_TOPIC_PREFIX"
        )
    return ""


db_app = typer.Typer(help="The PostgreSQL schema of the run history.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the history tables to the newest schema (Alembic; safe to run twice)."""
    from services.projector.db import current_revision, upgrade_database

    settings = get_settings()
    if not settings.database_url:
        err.print("[red]error:[/] DATABASE_URL is not set (`switchyard dev up` starts a local PostgreSQL).")
        raise typer.Exit(2)
    upgrade_database(settings.database_url)
    err.print(f"database at revision {current_revision(settings.database_url)}")
