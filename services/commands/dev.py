"""`switchyard dev`: start, stop and inspect the local Kafka broker and PostgreSQL."""

from __future__ import annotations

import json

import typer

from services.commands.text import console, esc
from services.config import get_settings
from services.devinfra import launcher
from services.devinfra.kafka_local import LauncherError

app = typer.Typer(
    help="Local infrastructure: a real Kafka broker (KRaft) and a real PostgreSQL, started on demand.",
    no_args_is_help=True,
)
err = console(stderr=True)


def _progress(msg: str) -> None:
    err.print(f"[cyan]•[/] {esc(msg)}")


@app.command()
def up() -> None:
    """Start Kafka and PostgreSQL unless configured or already running; print how to reach them.

    Uses KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL when set; else Docker Compose when a Docker
    engine answers; else a local broker from the official Kafka jars (Java 17 + Maven) and an
    embedded PostgreSQL. Safe to run twice. Load the addresses with: eval "$(switchyard dev env)".
    """
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
def env() -> None:
    """Print `export` lines for the running services, for `eval "$(switchyard dev env)"`."""
    for line in launcher.export_lines(launcher.DevState.load()):
        print(line)


@app.command()
def down() -> None:
    """Stop what `dev up` started (and nothing else)."""
    stopped = launcher.down(get_settings(), _progress)
    err.print("stopped: " + (", ".join(stopped) if stopped else "nothing (dev up started nothing)"))


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
