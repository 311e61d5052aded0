"""`switchyard workflow`: validate, sign and describe workflow definitions (offline; no Kafka).

Signed envelope written by ``sign`` (and published to ``wf.definitions`` by ``publish``)::

    {
      "tenant": "acme",
      "key_id": "acme-2024",
      "signature": "<base64 Ed25519 signature (64 bytes)>",
      "content_hash": "<sha256 hex of the RFC 8785 canonical JSON of the definition>",
      "definition": { ...the definition, defaults filled in... }
    }

The signature covers the RFC 8785 canonical JSON of
``{"definition", "tenant", "name", "version", "key_id"}`` (see :mod:`services.workflow.signing`).
``publish`` / ``list`` / ``show`` need the bus and live elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from services.commands.text import console, esc
from services.workflow import BUILTIN_ACTIONS, DefinitionError, load_definition_file, sign_definition
from services.workflow.keyfiles import read_private_key, write_keypair
from services.workflow.schema_export import definition_schema_text

app = typer.Typer(
    help="Workflow definitions: validate, generate signing keys, sign, export the JSON Schema.",
    no_args_is_help=True,
)
out = console(highlight=False, soft_wrap=True)
err = console(stderr=True, highlight=False, soft_wrap=True)


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Definition files (YAML or JSON).", show_default=False)],
    action: Annotated[
        list[str] | None,
        typer.Option("--action", "-a", help="Also accept this action name (repeatable)."),
    ] = None,
    any_action: Annotated[
        bool, typer.Option("--any-action", help="Do not check action names against the built-ins.")
    ] = False,
) -> None:
    """Validate definition files and report every problem (file, line, JSON path, what to do).

    Checks the shape, the DAG (unknown needs, self-loops, cycles, limits), actions, expressions
    and which steps each expression may read. Prints "OK <name> v<version>" per valid file; exits 1
    if any file has problems.
    """
    known = None if any_action else BUILTIN_ACTIONS | set(action or [])
    failed = False
    for path in files:
        try:
            defn = load_definition_file(path, known_actions=known)
        except DefinitionError as exc:
            failed = True
            for problem in exc.problems:
                err.print(f"[red]✗[/] {esc(problem)}")
            continue
        out.print(f"OK {esc(defn.name)} v{defn.version}  ({esc(path)})")
    if failed:
        raise typer.Exit(1)


@app.command()
def keygen(
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Directory for the key files.")],
    key_id: Annotated[str, typer.Option("--key-id", help="Key id, as registered in the tenant's keyring.")],
) -> None:
    """Generate an Ed25519 signing key pair: <KEY_ID>.key (private, mode 0600) and <KEY_ID>.pub.

    Prints the key id and the base64 public key to add to the tenant's keyring. Never overwrites.
    """
    try:
        files = write_keypair(out_dir, key_id)
    except FileExistsError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    err.print(f"private key: {esc(files.private_path)} (keep it secret)")
    err.print(f"public key:  {esc(files.public_path)}")
    out.print(f"key_id: {esc(files.key_id)}")
    out.print(f"public_key: {files.public_key}")


@app.command()
def sign(
    file: Annotated[Path, typer.Argument(help="Definition file (YAML or JSON).", show_default=False)],
    key: Annotated[Path, typer.Option("--key", help="Private key file written by `keygen`.")],
    key_id: Annotated[str, typer.Option("--key-id", help="Id of that key in the tenant's keyring.")],
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant the definition is signed for.")],
    out_file: Annotated[
        Path | None, typer.Option("--out", help="Write the signed envelope here instead of stdout.")
    ] = None,
) -> None:
    """Validate a definition and sign it for a tenant; writes the signed JSON envelope.

    The envelope holds tenant, key_id, base64 Ed25519 signature, content_hash and the definition.
    """
    try:
        defn = load_definition_file(file, known_actions=None)
    except DefinitionError as exc:
        for problem in exc.problems:
            err.print(f"[red]✗[/] {esc(problem)}")
        raise typer.Exit(1) from exc
    try:
        private_key = read_private_key(key)
    except (OSError, ValueError) as exc:
        err.print(f"[red]error:[/] cannot read private key {esc(key)}: {esc(exc)}")
        raise typer.Exit(1) from exc
    try:
        signed = sign_definition(defn, tenant=tenant, key_id=key_id, private_key=private_key)
    except ValueError as exc:  # pydantic: bad tenant or key id
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(1) from exc
    text = json.dumps(signed.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    if out_file is None:
        typer.echo(text, nl=False)
    else:
        out_file.write_text(text, encoding="utf-8")
        what = f"{esc(defn.name)} v{defn.version} for tenant {esc(tenant)} with key {esc(key_id)}"
        err.print(f"signed {what} -> {esc(out_file)}")


@app.command()
def schema(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the schema to this file.")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="With --out: exit 1 if the file differs instead of writing it.")
    ] = False,
) -> None:
    """Print (or write) the JSON Schema of workflow definitions, generated from the models.

    The committed copy is schemas/workflow-definition.schema.json; point editors at it.
    """
    text = definition_schema_text()
    if out_file is None:
        typer.echo(text, nl=False)
        return
    if check:
        current = out_file.read_text(encoding="utf-8") if out_file.exists() else ""
        if current != text:
            err.print(
                f"[red]out of date:[/] {esc(out_file)}; regenerate with `switchyard workflow schema --out`"
            )
            raise typer.Exit(1)
        err.print(f"{esc(out_file)} is up to date")
        return
    out_file.write_text(text, encoding="utf-8")
    err.print(f"wrote {esc(out_file)}")
