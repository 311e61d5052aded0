"""`switchyard dev`: start, stop and inspect the local Kafka broker and PostgreSQL."""

from __future__ import annotations

import json

import typer

from services.commands.text import console, esc
from services.config import get_settings
from services.devinfra import kafka_cluster, kafka_secure, launcher
from services.devinfra.kafka_local import LauncherError

app = typer.Typer(
    help="Local infrastructure: a real Kafka broker (KRaft) and a real PostgreSQL, started on demand.",
    no_args_is_help=True,
)
err = console(stderr=True)


def _progress(msg: str) -> None:
    err.print(f"[cyan]•[/] {esc(msg)}")


SECURE = typer.Option(
    False, "--secure", help="The secured broker (SASL/SCRAM-SHA-512, ACLs) on its own ports, not the dev one."
)
ROLE = typer.Option(
    "admin",
    "--role",
    help="With --secure: whose client settings to print (admin, router, executor, "
    "projector, operator, tenant).",
)
PORT = typer.Option(kafka_secure.DEFAULT_PORT, "--port", help="With --secure: client (SASL) port.")
CONTROLLER_PORT = typer.Option(
    kafka_secure.DEFAULT_CONTROLLER_PORT, "--controller-port", help="With --secure: controller port."
)


BROKERS = typer.Option(
    1,
    "--brokers",
    help="1: the dev broker; 3: a three-node cluster (replication 3, min ISR 2) on its own ports.",
)
CLUSTER_PORT = typer.Option(
    kafka_cluster.DEFAULT_BASE_PORT,
    "--cluster-port",
    help="With --brokers 3: first node's client port (nodes use it, +2, +4; controllers one above).",
)


def _check_brokers(brokers: int, secure: bool) -> None:
    if brokers not in (1, kafka_cluster.NODES) or (secure and brokers != 1):
        err.print(f"[red]error:[/] --brokers is 1 or {kafka_cluster.NODES} (and 1 with --secure)")
        raise typer.Exit(2)


def _cluster_up(cluster_port: int) -> None:
    cluster = kafka_cluster.local_cluster(cluster_port)
    try:
        cluster.start(_progress)
    except LauncherError as exc:
        raise _secure_failed(exc) from exc
    err.print(f"[green]Kafka ({kafka_cluster.NODES}-node cluster)[/] {cluster.bootstrap}")
    _print_cluster_env(cluster)


def _print_cluster_env(cluster: kafka_cluster.LocalCluster) -> None:
    postgres = launcher.DevState.load().postgres
    for line in kafka_cluster.export_lines(cluster) + (
        [f"export DATABASE_URL='{postgres.address}'"] if postgres else []
    ):
        print(line)


def _secure_failed(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/] {esc(exc)}")
    return typer.Exit(1)


@app.command()
def up(
    secure: bool = SECURE,
    role: str = ROLE,
    tenant: list[str] = typer.Option(
        [], "--tenant", help="With --secure: also make this tenant's principal (User:<tenant>); repeatable."
    ),
    port: int = PORT,
    controller_port: int = CONTROLLER_PORT,
    brokers: int = BROKERS,
    cluster_port: int = CLUSTER_PORT,
) -> None:
    """Start Kafka and PostgreSQL unless configured or already running; print how to reach them.

    Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set; else Docker Compose when a Docker
    engine answers; else a local broker from the official Kafka jars (Java 17 + Maven) and an
    embedded PostgreSQL. Safe to run twice. Load the addresses with: eval "$(switchyard dev env)".

    --secure starts a second broker from the same jars, beside the dev one, with SASL/SCRAM-SHA-512
    and the standard authorizer (nothing allowed without an ACL), makes a principal per service
    role (User:switchyard.router, .executor, .projector, .operator) and per --tenant, and prints
    --role's client settings. Then `switchyard topics ensure` and `switchyard acl apply` as admin.

    --brokers 3 starts a three-node cluster from the same jars, beside the dev broker (replication
    factor 3, min.insync.replicas 2, unclean leader election off) and prints its settings.
    """
    _check_brokers(brokers, secure)
    if brokers != 1:
        _cluster_up(cluster_port)
        return
    if secure:
        kafka = kafka_secure.secure_kafka(port, controller_port)
        try:
            kafka_secure.start(kafka, tenant, _progress)
            username = kafka_secure.username_for(role, tenant[0] if tenant else None)
            lines = kafka_secure.export_lines(kafka, username)
        except (LauncherError, ValueError) as exc:
            raise _secure_failed(exc) from exc
        err.print(f"[green]Kafka (secured)[/] {kafka.bootstrap}  as User:{esc(username)}")
        err.print(f"credentials of every principal: {esc(kafka.credentials_file)} (mode 0600)")
        postgres = launcher.DevState.load().postgres
        for line in lines + ([f"export DATABASE_URL='{postgres.address}'"] if postgres else []):
            print(line)
        return
    try:
        state = launcher.up(get_settings(), _progress)
    except LauncherError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    assert state.kafka and state.postgres
    err.print(f"[green]Kafka[/]      {state.kafka.address}  ({state.kafka.source})")
    err.print(f"[green]PostgreSQL[/] {state.postgres.address}  ({state.postgres.source})")
    for line in launcher.export_lines(state):
        print(line)


@app.command()
def env(
    secure: bool = SECURE,
    role: str = ROLE,
    tenant: str | None = typer.Option(None, "--tenant", help="With --secure --role tenant: which tenant."),
    port: int = PORT,
    controller_port: int = CONTROLLER_PORT,
    brokers: int = BROKERS,
    cluster_port: int = CLUSTER_PORT,
) -> None:
    """Print `export` lines for the running services, for `eval "$(switchyard dev env)"`."""
    _check_brokers(brokers, secure)
    if brokers != 1:
        _print_cluster_env(kafka_cluster.local_cluster(cluster_port))
        return
    state = launcher.DevState.load()
    if not secure:
        for line in launcher.export_lines(state):
            print(line)
        return
    kafka = kafka_secure.secure_kafka(port, controller_port)
    try:
        lines = kafka_secure.export_lines(kafka, kafka_secure.username_for(role, tenant))
    except LauncherError as exc:
        raise _secure_failed(exc) from exc
    for line in lines + ([f"export DATABASE_URL='{state.postgres.address}'"] if state.postgres else []):
        print(line)


@app.command()
def down(
    secure: bool = SECURE,
    port: int = PORT,
    controller_port: int = CONTROLLER_PORT,
    brokers: int = BROKERS,
    cluster_port: int = CLUSTER_PORT,
    wipe: bool = typer.Option(
        False,
        "--wipe",
        help="Also delete the local broker's and database's data (every topic, run history, "
        "offsets): the next `dev up` starts empty. Only for the single local broker.",
    ),
) -> None:
    """Stop what `dev up` started (and nothing else); --secure: only the secured broker;
    --brokers 3: only the cluster."""
    _check_brokers(brokers, secure)
    if wipe and (secure or brokers != 1):
        raise typer.BadParameter("--wipe is for the single local broker only", param_hint="--wipe")
    if brokers != 1:
        nodes = kafka_cluster.local_cluster(cluster_port).stop()
        err.print("stopped: " + (f"cluster nodes {nodes}" if nodes else "nothing"))
        return
    if secure:
        kafka = kafka_secure.secure_kafka(port, controller_port)
        err.print("stopped: " + (f"secured kafka ({kafka.bootstrap})" if kafka.stop() else "nothing"))
        return
    stopped = launcher.down(get_settings(), _progress)
    err.print("stopped: " + (", ".join(stopped) if stopped else "nothing (dev up started nothing)"))
    if wipe:
        try:
            wiped = launcher.wipe(get_settings())
        except LauncherError as exc:
            err.print(f"[red]not wiped:[/] {esc(str(exc))}")
            raise typer.Exit(1) from exc
        err.print("deleted: " + (", ".join(wiped) if wiped else "nothing (no local data)"))


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show where Kafka and PostgreSQL are, whether they answer, and where their logs are."""
    report = launcher.status(get_settings())
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for name, info in report.items():
        if not info.get("configured"):
            err.print(f"{name:10} not running (start with: switchyard dev up)")
            continue
        mark = "[green]up[/]" if info.get("reachable") else "[red]down[/]"
        err.print(f"{name:10} {mark}  {info['address']}  source={info['source']}  log={info.get('log_file')}")
