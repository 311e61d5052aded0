"""`switchyard tenant`: create, change, suspend and inspect tenants (the compacted tenants registry)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.table import Table

from services.bus.topics import Topics, admin_client
from services.commands.connections import kafka_settings
from services.commands.text import add_row, console, esc
from services.tenancy.acl import ensure_tenant_acls
from services.tenancy.admin import create_trigger_topic, read_tenants, save_tenant
from services.tenancy.config import TenantConfig
from services.workflow.signing import KeyEntry, Keyring

app = typer.Typer(
    help="Tenants: trigger topics, limits, permission scopes and signing keyrings.", no_args_is_help=True
)
out = console()
err = console(stderr=True)


def _get(tenant: str) -> TenantConfig:
    config = read_tenants(kafka_settings()).get(tenant)
    if config is None:
        name = esc(repr(tenant))
        err.print(
            f"[red]error:[/] no tenant {name} (create it with `switchyard tenant create {esc(tenant)}`)"
        )
        raise typer.Exit(1)
    return config


def _operator_keys(specs: list[str]) -> list[KeyEntry]:
    """``--operator-key KEY_ID=PUBLIC_KEY_FILE`` values as operator-role keyring entries."""
    entries = []
    for spec in specs:
        key_id, sep, path = spec.partition("=")
        try:
            if not sep:
                raise ValueError("expected KEY_ID=PUBLIC_KEY_FILE")
            public = Path(path).read_text().strip()
            entries.append(KeyEntry(key_id=key_id, public_key=public, role="operator"))
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/] --operator-key {esc(spec)}: {esc(exc)}")
            raise typer.Exit(2) from exc
    return entries


def _with_operator_keys(keyring: Keyring, added: list[KeyEntry]) -> Keyring:
    """``keyring`` with ``added`` (an entry of the same id is replaced)."""
    ids = {k.key_id for k in added}
    return Keyring(tenant=keyring.tenant, keys=[*(k for k in keyring.keys if k.key_id not in ids), *added])


def _save(config: TenantConfig) -> None:
    save_tenant(kafka_settings(), config)
    out.print_json(json.dumps(config.model_dump(mode="json")))


@app.command()
def create(
    tenant: str = typer.Argument(..., help="Tenant id: lower-case letters, digits, '-' and '_'."),
    max_concurrent_runs: int = typer.Option(100, help="Runs running at once across the tenant's workflows."),
    trigger_rate: float = typer.Option(100.0, help="Triggers accepted per second."),
    trigger_burst: int = typer.Option(200, help="Trigger burst (token bucket size)."),
    trigger_partitions: int = typer.Option(3, help="Partitions of the tenant's trigger topic."),
    scope: list[str] = typer.Option([], help="Granted permission scope (repeat), e.g. firm_data:write."),
    operator: list[str] = typer.Option([], help="Who may replay/cancel the tenant's runs (repeat)."),
    operator_key: list[str] = typer.Option(
        [], help="KEY_ID=PUBLIC_KEY_FILE: an operator key signing replay/cancel (repeat)."
    ),
    egress_allow: list[str] = typer.Option(
        [],
        help="Host (api.acme.internal, *.acme.internal) or CIDR that http.request may reach although"
        " private (repeat).",
    ),
    public_key: Path | None = typer.Option(None, help="Public key file (from `workflow keygen`) to trust."),
    key_id: str | None = typer.Option(None, help="Key id of --public-key."),
    slices: int = typer.Option(1, help="Internal partitions the tenant's runs spread over (limits split)."),
    base_partition: int | None = typer.Option(None, help="Pin the tenant's slices (dedicated placement)."),
    principal: str | None = typer.Option(
        None,
        help="Kafka principal allowed to write the trigger topic (default User:<tenant>); ACLs are "
        "created only where the cluster has an authorizer.",
    ),
) -> None:
    """Register a tenant and create its trigger topic (and ACLs on secured clusters).

    Fails if the tenant exists (use `update`)."""
    settings = kafka_settings()
    if tenant in read_tenants(settings):
        err.print(f"[red]error:[/] tenant {esc(repr(tenant))} exists; use `switchyard tenant update`")
        raise typer.Exit(1)
    keys = []
    if public_key is not None:
        if not key_id:
            err.print("[red]error:[/] --public-key needs --key-id")
            raise typer.Exit(2)
        keys.append(KeyEntry(key_id=key_id, public_key=public_key.read_text().strip()))
    keys = _with_operator_keys(Keyring(tenant=tenant, keys=keys), _operator_keys(operator_key)).keys
    try:
        config = TenantConfig(
            tenant=tenant,
            max_concurrent_runs=max_concurrent_runs,
            trigger_rate=trigger_rate,
            trigger_burst=trigger_burst,
            trigger_partitions=trigger_partitions,
            scopes=scope,
            operators=operator,
            egress_allow=egress_allow,
            keyring=Keyring(tenant=tenant, keys=keys),
            slices=slices,
            base_partition=base_partition,
        )
    except ValidationError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(2) from exc
    created = create_trigger_topic(settings, config)
    err.print(("created" if created else "kept existing") + f" trigger topic for {esc(tenant)}")
    acls = ensure_tenant_acls(
        admin_client(settings), Topics(settings.topic_prefix), tenant, principal or f"User:{tenant}"
    )
    err.print(
        "ACLs: " + ("; ".join(esc(acl) for acl in acls) if acls else "none (the cluster has no authorizer)")
    )
    _save(config)


@app.command()
def update(
    tenant: str,
    max_concurrent_runs: int | None = typer.Option(None, help="Runs running at once."),
    trigger_rate: float | None = typer.Option(None, help="Triggers accepted per second."),
    trigger_burst: int | None = typer.Option(None, help="Trigger burst (token bucket size)."),
    external_call_rate: float | None = typer.Option(
        None, help="External calls per second per executor process."
    ),
    max_pending_runs: int | None = typer.Option(None, help="Pending runs before intake pauses the tenant."),
    slices: int | None = typer.Option(None, help="Internal partitions the tenant's runs spread over."),
    scope: list[str] = typer.Option([], help="Replace the granted scopes (repeat)."),
    operator: list[str] = typer.Option([], help="Replace the operators (repeat)."),
    egress_allow: list[str] = typer.Option([], help="Replace the egress allow-list: host or CIDR (repeat)."),
    clear_egress_allow: bool = typer.Option(False, help="Empty the egress allow-list."),
    operator_key: list[str] = typer.Option(
        [], help="KEY_ID=PUBLIC_KEY_FILE: add (or replace) an operator key signing replay/cancel (repeat)."
    ),
) -> None:
    """Change a tenant's limits, scopes, operators, operator keys or egress allow-list (only the
    options given)."""
    added = _operator_keys(operator_key)
    config = _get(tenant)
    changes: dict[str, object] = {
        name: value
        for name, value in {
            "max_concurrent_runs": max_concurrent_runs,
            "trigger_rate": trigger_rate,
            "trigger_burst": trigger_burst,
            "external_call_rate": external_call_rate,
            "max_pending_runs": max_pending_runs,
            "slices": slices,
            "scopes": scope or None,
            "operators": operator or None,
            "egress_allow": [] if clear_egress_allow else (egress_allow or None),
            "keyring": _with_operator_keys(config.keyring_or_empty(), added) if added else None,
        }.items()
        if value is not None
    }
    if not changes:
        err.print("nothing to change: pass at least one option (see --help)")
        raise typer.Exit(2)
    try:
        updated = TenantConfig.model_validate({**config.model_dump(), **changes})
    except ValidationError as exc:
        err.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(2) from exc
    _save(updated)


@app.command()
def add_key(
    tenant: str,
    key_id: str = typer.Option(..., help="Id of the new key."),
    public_key: Path = typer.Option(
        ..., help="Public key file (base64 raw Ed25519, from `workflow keygen`)."
    ),
) -> None:
    """Trust one more signing key (rotation: add the new key, then later revoke the old one)."""
    config = _get(tenant)
    keyring = config.keyring_or_empty()
    entry = KeyEntry(key_id=key_id, public_key=public_key.read_text().strip())
    _save(config.model_copy(update={"keyring": Keyring(tenant=tenant, keys=[*keyring.keys, entry])}))


@app.command()
def suspend(tenant: str) -> None:
    """Refuse the tenant's triggers (they go to the DLQ with reason tenant_suspended)."""
    _save(_get(tenant).model_copy(update={"status": "suspended"}))


@app.command()
def resume(tenant: str) -> None:
    """Accept the tenant's triggers again."""
    _save(_get(tenant).model_copy(update={"status": "active"}))


@app.command()
def show(tenant: str) -> None:
    """Print a tenant's configuration as JSON."""
    out.print_json(json.dumps(_get(tenant).model_dump(mode="json")))


@app.command("list")
def list_() -> None:
    """List tenants with their status and limits."""
    table = Table("tenant", "status", "max runs", "trigger rate", "scopes", "keys")
    for name, config in sorted(read_tenants(kafka_settings()).items()):
        add_row(
            table,
            name,
            config.status,
            str(config.max_concurrent_runs),
            f"{config.trigger_rate:g}/s",
            ", ".join(config.scopes),
            str(len(config.keyring_or_empty().keys)),
        )
    out.print(table)
