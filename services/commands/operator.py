"""`switchyard operator keygen`: an operator's Ed25519 key pair for signing replay/cancel."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import TypeAdapter, ValidationError

from services.commands.text import console, esc
from services.workflow.keyfiles import write_keypair
from services.workflow.signing import KeyId

app = typer.Typer(help="Operators: keys that sign control commands (replay, cancel).", no_args_is_help=True)
out = console()
err = console(stderr=True)


@app.command()
def keygen(
    key_id: str = typer.Option(
        ..., help="Key id, e.g. alice@acme: recorded as the requester of every command."
    ),
    out_dir: Path = typer.Option(Path("keys"), help="Directory for <key-id>.key (0600) and <key-id>.pub."),
) -> None:
    """Write an operator key pair and print its public key and how to register it."""
    try:
        TypeAdapter(KeyId).validate_python(key_id)
    except ValidationError as exc:
        err.print(f"[red]error:[/] {esc(key_id)!r} is not a key id: letters, digits and . _ : @ -")
        raise typer.Exit(2) from exc
    try:
        files = write_keypair(out_dir, key_id)
    except FileExistsError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    out.print(files.public_key, markup=False, highlight=False)
    global_keys = json.dumps({key_id: files.public_key})
    err.print(
        f"wrote {esc(files.private_path)} (private, keep it secret) and {esc(files.public_path)}\n"
        "register it as an operator of a tenant:\n"
        f"  switchyard tenant update TENANT --operator-key {esc(key_id)}={esc(files.public_path)}\n"
        "or as a global operator (every tenant) in the router's environment:\n"
        f"  SWITCHYARD_OPERATOR_KEYS='{esc(global_keys)}'\n"
        "then sign with it:\n"
        f"  switchyard replay RUN --reason ... --key {esc(files.private_path)}"
        f"   (or SWITCHYARD_OPERATOR_KEY_FILE={esc(files.private_path)})",
        soft_wrap=True,
    )
