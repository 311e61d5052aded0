"""The ``switchyard`` command line: one Typer app, one sub-app per command group."""

from __future__ import annotations

import typer

from services.commands import (
    audit,
    control,
    demo,
    dev,
    engine,
    runs,
    status,
    tenant,
    triggers,
    workflow,
    workflow_registry,
)

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
app.add_typer(engine.topics_app, name="topics")
app.add_typer(engine.db_app, name="db")
app.add_typer(runs.app, name="runs", help="Run history from PostgreSQL.")
app.add_typer(triggers.app, name="triggers")
app.add_typer(audit.app, name="audit", help="Audit the projection against the Kafka log.")
app.command()(engine.router)
app.command()(engine.executor)
app.command()(engine.projector)
app.command()(engine.run)
app.command()(engine.trigger)
app.command()(control.replay)
app.command()(control.cancel)
app.command()(demo.demo)
status.register(app)


def main() -> None:
    app()
