"""`switchyard triggers list | run`: installed trigger plugins, and running trigger instances."""

from __future__ import annotations

import threading
from pathlib import Path

import typer
from rich.table import Table

from services.commands.text import console, esc
from services.config import get_settings
from services.runtime import install_signal_handlers, setup_logging
from services.triggers.plugins import TriggerLoadError, TriggerRegistry
from services.triggers.runner import TriggerConfigError, load_instances, run_triggers

app = typer.Typer(
    help="Trigger plugins: sources (cron schedules, …) that emit trigger events to tenants' topics.",
    no_args_is_help=True,
)
out = console()
err = console(stderr=True)


def _registry() -> TriggerRegistry:
    try:
        return TriggerRegistry.load()
    except TriggerLoadError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc


@app.command("list")
def list_plugins() -> None:
    """The installed trigger plugins (built-in and `switchyard.triggers` entry points)."""
    registry = _registry()
    table = Table("plugin", "source", "config fields")
    for plugin in sorted(registry, key=lambda p: p.name):
        fields = ", ".join(
            f"{name}{'' if info.is_required() else '?'}" for name, info in plugin.Config.model_fields.items()
        )
        table.add_row(plugin.name, registry.source(plugin.name) or "", fields)
    out.print(table)


@app.command("run")
def run(
    config: Path = typer.Option(..., "--config", exists=True, dir_okay=False, help="YAML list of instances."),
    check: bool = typer.Option(False, "--check", help="Only validate the configuration, then exit."),
) -> None:
    """Run the trigger instances of a configuration file until Ctrl-C / SIGTERM."""
    registry = _registry()
    try:
        prepared = load_instances(config, registry)
    except TriggerConfigError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(2) from exc
    if check:
        out.print(f"{len(prepared)} trigger instance(s) valid")
        return
    settings = get_settings()
    if not settings.kafka_bootstrap_servers:
        err.print('[red]error:[/] KAFKA_BOOTSTRAP_SERVERS is not set (`eval "$(switchyard dev env)"`).')
        raise typer.Exit(2)
    setup_logging(settings)
    stop = threading.Event()
    install_signal_handlers(stop)
    run_triggers(settings, prepared, stop)
