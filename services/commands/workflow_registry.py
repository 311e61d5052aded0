"""`switchyard workflow publish | list | show`: the definitions registry on Kafka."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from services.commands.connections import kafka_settings
from services.commands.text import add_row, console, esc
from services.registry.publishing import PublishRefused, publish_signed, read_definitions
from services.workflow.signing import SignedDefinition

out = console()
err = console(stderr=True)


def publish_cmd(
    file: Path = typer.Argument(..., help="Signed envelope written by `switchyard workflow sign`."),
    publisher: str = typer.Option(getpass.getuser(), help="Who publishes (recorded in the registry)."),
) -> None:
    """Publish a signed definition to the tenant's registry. Versions are immutable: republishing a version
    with different content, or a version below the newest published one, is refused."""
    try:
        signed = SignedDefinition.model_validate_json(file.read_text())
    except (OSError, ValidationError) as exc:
        err.print(f"[red]error:[/] {esc(file)} is not a signed definition envelope: {esc(exc)}")
        raise typer.Exit(1) from exc
    try:
        changed = publish_signed(kafka_settings(), signed, publisher)
    except PublishRefused as exc:
        err.print(f"[red]refused:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    verb = "published" if changed else "already published (identical)"
    err.print(f"{verb}: {esc(signed.tenant)}/{esc(signed.name)} v{signed.version}")


def list_cmd(tenant: str | None = typer.Option(None, help="Only this tenant.")) -> None:
    """List published definitions."""
    table = Table("tenant", "workflow", "version", "steps", "key", "publisher", "content hash")
    for _, entry in sorted(read_definitions(kafka_settings()).items()):
        if tenant and entry.tenant != tenant:
            continue
        d = entry.signed.definition
        add_row(
            table,
            entry.tenant,
            d.name,
            str(d.version),
            str(len(d.steps)),
            entry.signed.key_id,
            entry.publisher,
            entry.signed.content_hash[:12],
        )
    out.print(table)


def show_cmd(
    name: str,
    tenant: str = typer.Option(..., help="Tenant of the workflow."),
    version: int | None = typer.Option(None, help="Version (default: newest)."),
) -> None:
    """Print a published definition (JSON)."""
    entries = [
        e for e in read_definitions(kafka_settings()).values() if e.tenant == tenant and e.signed.name == name
    ]
    if version is not None:
        entries = [e for e in entries if e.signed.version == version]
    if not entries:
        err.print(
            f"[red]error:[/] no published {esc(name)}"
            + (f" v{version}" if version else "")
            + f" for {esc(tenant)}"
        )
        raise typer.Exit(1)
    entry = max(entries, key=lambda e: e.signed.version)
    out.print_json(json.dumps(entry.signed.definition.model_dump(mode="json")))


def register(app: typer.Typer) -> None:
    app.command("publish")(publish_cmd)
    app.command("list")(list_cmd)
    app.command("show")(show_cmd)
