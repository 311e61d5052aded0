"""``switchyard console``: serve the console, and manage its operators and tokens.

``switchyard console [--host 127.0.0.1] [--port 8480]`` serves the API and the UI;
``switchyard console user add|list``, ``switchyard console token add|revoke`` and
``switchyard console trigger-token add`` manage who may use it (tokens are printed once, stored
hashed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from sqlalchemy.orm import Session

from services.commands.text import console as rich_console
from services.commands.text import esc
from services.config import load_settings

app = typer.Typer(
    help="The operator console: HTTP API (/v1) and web UI over runs, dead letters and tenants.",
    invoke_without_command=True,
)
user_app = typer.Typer(help="Operator accounts.", no_args_is_help=True)
token_app = typer.Typer(help="Operator tokens (API bearer tokens and UI login).", no_args_is_help=True)
trigger_app = typer.Typer(help="Tenant tokens for the webhook trigger endpoint.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")
app.add_typer(trigger_app, name="trigger-token")
err = rich_console(stderr=True)
DEFAULT_PORT = 8480


@app.callback()
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(DEFAULT_PORT, min=1, max=65535, help="TCP port."),
) -> None:
    """Serve the console (API under /v1, UI at /) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from services.console.app import create_app
    from services.observability import logs

    settings = load_settings()
    if not settings.database_url:
        err.print("[red]error:[/] DATABASE_URL is not set (`switchyard dev up` starts a local PostgreSQL).")
        raise typer.Exit(2)
    logs.configure(settings.log_level, settings.log_format)
    err.print(f"console on http://{host}:{port}/ (API: /v1, OpenAPI: /v1/openapi.json)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)


@contextmanager
def _session() -> Iterator[Session]:
    from services.projector.db import make_engine

    url = load_settings().database_url
    if not url:
        err.print("[red]error:[/] DATABASE_URL is not set.")
        raise typer.Exit(2)
    engine = make_engine(url)
    try:
        with Session(engine) as session:
            yield session
            session.commit()
    finally:
        engine.dispose()


def _fail(message: str) -> None:
    err.print(f"[red]error:[/] {esc(message)}")
    raise typer.Exit(1)


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="Operator name; commands carry it as the requester."),
    tenant: list[str] = typer.Option([], help="A tenant this operator may use (repeat for several)."),
    all_tenants: bool = typer.Option(False, "--global", help="Every tenant."),
    role: str = typer.Option("operator", help="operator (read, replay, cancel) or viewer (read only)."),
) -> None:
    """Create an operator and print its first token (shown once).

    The router accepts its commands only when NAME is one of the tenant's operators
    (`tenant update --operator`) or a global operator (SWITCHYARD_GLOBAL_OPERATORS)."""
    from services.console.accounts import AccountError, add_operator

    with _session() as session:
        try:
            token = add_operator(session, name, tenant, role, all_tenants)
        except AccountError as exc:
            _fail(str(exc))
            return
    print(token.token)
    err.print(f"operator {esc(name)} created; the line above is its token (shown once)")


@user_app.command("list")
def user_list() -> None:
    """Operators, their roles and tokens (ids only)."""
    from services.console.accounts import list_operators

    with _session() as session:
        for op, grants, tokens in list_operators(session):
            roles = ", ".join(f"{'all' if g.tenant == '*' else g.tenant}: {g.role}" for g in grants)
            live = [t.token_id for t in tokens if t.revoked_at is None]
            print(f"{op.name}\t{roles}\ttokens: {' '.join(live) or '-'}")


@token_app.command("add")
def token_add(
    name: str = typer.Argument(..., help="The operator."),
    label: str | None = typer.Option(None, help="What the token is for."),
) -> None:
    """A new token for an operator (printed once)."""
    from services.console.accounts import AccountError, add_token

    with _session() as session:
        try:
            token = add_token(session, "operator", name, label)
        except AccountError as exc:
            _fail(str(exc))
            return
    print(token.token)


@token_app.command("revoke")
def token_revoke(token_id: str = typer.Argument(..., help="The token id (the part after sy_).")) -> None:
    """Revoke a token (operator or trigger) at once."""
    from services.console.accounts import AccountError, revoke_token

    with _session() as session:
        try:
            revoke_token(session, token_id)
        except AccountError as exc:
            _fail(str(exc))
    err.print(f"token {esc(token_id)} revoked")


@trigger_app.command("add")
def trigger_token_add(
    tenant: str = typer.Option(..., help="The tenant whose trigger topic the token may write to."),
    label: str | None = typer.Option(None, help="What the token is for (e.g. the calling system)."),
) -> None:
    """A token for POST /v1/tenants/TENANT/triggers (printed once)."""
    from services.console.accounts import add_token

    with _session() as session:
        token = add_token(session, "trigger", tenant, label)
    print(token.token)
