"""`switchyard acl plan | apply`: the least-privilege ACLs of each role, printed or created.

Both print the same bindings, from :func:`services.tenancy.acl.plan`; `apply` creates them with
the Admin API and needs a principal allowed to (the cluster's admin). Principals default to
``User:switchyard.<role>`` for the services and ``User:<tenant>`` for tenants.
"""

from __future__ import annotations

import json
from typing import get_args

import typer
from confluent_kafka.admin import AclBinding  # type: ignore[attr-defined]

from services.bus.topics import TENANT_ID, Topics, admin_client
from services.commands.connections import kafka_settings
from services.commands.text import console, esc
from services.config import get_settings
from services.tenancy import acl

app = typer.Typer(
    help="Kafka ACLs of the engine's principals (least privilege per role).", no_args_is_help=True
)
out = console()
err = console(stderr=True)

ROLE = typer.Option(
    [],
    "--role",
    help="A service role (router, executor, projector, operator, console); repeat. Default: all five.",
)
TENANT = typer.Option([], "--tenant", help="A tenant whose principal may write its trigger topic; repeat.")
PRINCIPAL = typer.Option(
    [],
    "--principal",
    help="ROLE=User:name or TENANT=User:name, overriding a default principal; repeat.",
)
AS_JSON = typer.Option(False, "--json", help="Machine-readable output.")

Entry = tuple[str, str, acl.Role, str | None]  # (subject, principal, role, tenant)


def _entries(roles: list[str], tenants: list[str], principals: list[str]) -> list[Entry]:
    overrides: dict[str, str] = {}
    for item in principals:
        subject, sep, principal = item.partition("=")
        if not sep or not principal.startswith("User:"):
            raise typer.BadParameter(f"{item!r}: expected ROLE=User:name or TENANT=User:name")
        overrides[subject] = principal
    known = get_args(acl.Role)
    if bad := [r for r in roles if r not in acl.SERVICE_ROLES]:
        raise typer.BadParameter(f"unknown role {', '.join(bad)}: one of {', '.join(acl.SERVICE_ROLES)}")
    if bad := [t for t in tenants if not TENANT_ID.fullmatch(t)]:
        raise typer.BadParameter(f"not valid tenant ids: {', '.join(bad)}")
    chosen = [r for r in known if r in roles] if roles else list(acl.SERVICE_ROLES)
    entries: list[Entry] = [
        (role, overrides.get(role, acl.service_principal(role)), role, None) for role in chosen
    ]
    entries += [(t, overrides.get(t, acl.tenant_principal(t)), "tenant", t) for t in tenants]
    return entries


def _bindings(entries: list[Entry], topics: Topics) -> list[tuple[Entry, list[acl.Grant], list[AclBinding]]]:
    result = []
    for entry in entries:
        _, principal, role, tenant = entry
        grants = acl.plan(role, topics, tenant)
        result.append((entry, grants, [acl.binding(g, principal) for g in grants]))
    return result


def _print(
    planned: list[tuple[Entry, list[acl.Grant], list[AclBinding]]], prefix: str, as_json: bool
) -> None:
    if as_json:
        doc = [
            {
                "role": role,
                "tenant": tenant,
                "principal": principal,
                "grants": [
                    {"resource": g.resource, "pattern": g.pattern, "name": g.name, "operation": g.operation}
                    for g in grants
                ],
            }
            for (_, principal, role, tenant), grants, _ in planned
        ]
        print(json.dumps({"topic_prefix": prefix, "principals": doc}, indent=2))
        return
    for (subject, principal, role, _), grants, _ in planned:
        out.print(f"[bold]{esc(principal)}[/]  ({esc(role if role != 'tenant' else 'tenant ' + subject)})")
        for grant in grants:
            out.print(f"  ALLOW {esc(grant.describe())}")


@app.command()
def plan(
    role: list[str] = ROLE,
    tenant: list[str] = TENANT,
    principal: list[str] = PRINCIPAL,
    as_json: bool = AS_JSON,
) -> None:
    """Print the ACL bindings each principal gets (nothing is sent to Kafka).

    A prefixed name ends in `*`. Anything not listed is refused on a cluster with
    allow.everyone.if.no.acl.found=false."""
    prefix = get_settings().topic_prefix
    _print(_bindings(_entries(role, tenant, principal), Topics(prefix)), prefix, as_json)


@app.command()
def apply(
    role: list[str] = ROLE,
    tenant: list[str] = TENANT,
    principal: list[str] = PRINCIPAL,
    as_json: bool = AS_JSON,
) -> None:
    """Create the bindings of `acl plan` on the cluster (idempotent; run as the cluster's admin)."""
    settings = kafka_settings()
    planned = _bindings(_entries(role, tenant, principal), Topics(settings.topic_prefix))
    everything = [b for _, _, bindings in planned for b in bindings]
    if not acl.apply(admin_client(settings), everything):
        err.print("[red]error:[/] the cluster has no authorizer (SECURITY_DISABLED): no ACL was created")
        raise typer.Exit(1)
    _print(planned, settings.topic_prefix, as_json)
    err.print(f"created {len(everything)} ACL bindings for {len(planned)} principals")
