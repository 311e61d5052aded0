"""The ``switchyard`` command line: one Typer app, one sub-app per command group."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from services.commands import (
    acl,
    audit,
    control,
    demo,
    dev,
    dlq,
    operator,
    processes,
    runs,
    status,
    tenant,
    triggers,
    workflow,
    workflow_registry,
)
from services.config import Settings, SettingsInvalid, settings_error_message
from services.console import cli as console_cli

app = typer.Typer(
    name="switchyard",
    help="Switchyard: a Kafka-native, multi-tenant workflow engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")
workflow_registry.register(workflow.app)
app.add_typer(workflow.app, name="workflow", help="Workflow definitions: validate, sign, publish, inspect.")
app.add_typer(tenant.app, name="tenant")
app.add_typer(operator.app, name="operator")
app.add_typer(processes.topics_app, name="topics")
app.add_typer(processes.db_app, name="db")
app.add_typer(runs.app, name="runs", help="Run history from PostgreSQL.")
app.add_typer(triggers.app, name="triggers")
app.add_typer(audit.app, name="audit", help="Audit the projection against the Kafka log.")
app.add_typer(acl.app, name="acl")
app.add_typer(dlq.app, name="dlq")
app.add_typer(console_cli.app, name="console")
app.command()(processes.router)
app.command()(processes.executor)
app.command()(processes.projector)
app.command()(processes.run)
app.command()(processes.trigger)
app.command()(control.replay)
app.command()(control.cancel)
app.command()(control.approve)
app.command()(demo.demo)
status.register(app)


def main() -> None:
    """The console script. Invalid settings end in one line on stderr and exit code 2, not a
    traceback, for every command (the engine's processes included: they start from here)."""
    try:
        app()
    except SettingsInvalid as exc:
        _settings_failed(str(exc))
    except (ValidationError, SettingsError) as exc:
        # Settings() built directly somewhere instead of through get_settings()
        if isinstance(exc, ValidationError) and exc.title != Settings.__name__:
            raise
        _settings_failed(settings_error_message(exc))


def _settings_failed(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
