"""The ``switchyard`` command line: one Typer app, one sub-app per command group."""

from __future__ import annotations

import typer

from services.commands import dev

app = typer.Typer(
    name="switchyard",
    help="Switchyard: a Kafka-native, multi-tenant workflow engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(dev.app, name="dev")


def main() -> None:
    app()
