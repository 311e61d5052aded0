"""The server-rendered web UI (Jinja templates, a small polling script, no build step).

Pages read through the same scoped queries as the API and act through the same
:func:`services.console.api.act`; forms carry the session's CSRF token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.console import dag, present, reads
from services.console.accounts import principal_for_token
from services.console.api import Filter, act, grafana_link, tenant_view
from services.console.auth import State, UiPrincipal, check_csrf, csrf_token
from services.contracts.vocabulary import RUN_TERMINAL
from services.control.commands import Kind

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters["pretty"] = lambda value: json.dumps(value, indent=2, ensure_ascii=False)
router = APIRouter(include_in_schema=False)


def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("principal", None)
    flash = request.session.pop("flash", None) if "session" in request.scope else None
    return TEMPLATES.TemplateResponse(
        request, name, {"csrf": csrf_token(request), "flash": flash, **context}, status_code=status_code
    )


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/runs", status_code=303)


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html")


@router.post("/login")
async def login(request: Request, state_: State) -> Response:
    form = await request.form()
    check_csrf(request, form)
    token = form.get("token")
    with state_.session() as session:
        principal = principal_for_token(session, token) if isinstance(token, str) else None
    if principal is None:
        return page(request, "login.html", status_code=401, error="unknown, revoked or malformed token")
    csrf = request.session.get("csrf")
    request.session.clear()  # a fresh session on login: nothing from before carries over
    request.session.update({"operator": principal.name, "csrf": csrf})
    return RedirectResponse("/runs", status_code=303)


@router.post("/logout")
async def logout(request: Request) -> RedirectResponse:
    check_csrf(request, await request.form())
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _query(request: Request, **changes: str | None) -> str:
    params = {k: v for k, v in request.query_params.items() if v}
    params.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        params.pop(k, None)
    return urlencode(params)


@router.get("/runs")
def runs_page(
    request: Request,
    state_: State,
    principal: UiPrincipal,
    f: Filter,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=reads.MAX_PAGE)] = 50,
) -> HTMLResponse:
    with state_.session() as session:
        try:
            rows, next_cursor = reads.list_runs(session, principal.readable, f, limit, cursor)
        except ValueError:
            rows, next_cursor = [], None
        counts = reads.state_counts(session, principal.readable, f)
        tenants = [t.tenant for t in reads.list_tenants(session, principal.readable)]
    return page(
        request,
        "runs.html",
        principal=principal,
        runs=[present.run_summary(r) for r in rows],
        counts=counts,
        f=f,
        tenants=tenants,
        states=reads.RUN_STATES,
        next_query=_query(request, cursor=next_cursor) if next_cursor else None,
        counts_query=_query(request, cursor=None),
        raw=dict(request.query_params),
    )


@router.get("/runs/counts")
def counts_fragment(request: Request, state_: State, principal: UiPrincipal, f: Filter) -> HTMLResponse:
    with state_.session() as session:
        counts = reads.state_counts(session, principal.readable, f)
    return page(request, "_counts.html", counts=counts, counts_query=_query(request, cursor=None))


def _run_context(state_: State, principal: Any, run_id: str) -> dict[str, Any]:
    with state_.session() as session:
        found = reads.timeline(session, principal.readable, run_id)
    if found is None:
        raise HTTPException(404, f"no run {run_id!r} that you may see")
    entry = state_.definition(found.run.tenant, found.run.workflow, found.run.version)
    if entry is not None:
        nodes = [dag.Node(s.id, tuple(s.needs)) for s in entry.signed.definition.steps]
    else:  # the registry does not know it (any more): the steps that ran, without edges
        nodes = [dag.Node(s.step_id, ()) for s in found.steps]
    states = {s.step_id: s.state for s in found.steps}
    return {
        "detail": present.run_detail(found),
        "svg": dag.svg(nodes, states),
        "dag_known": entry is not None,
        "step_ids": [n.step_id for n in nodes],
        "can_act": principal.can_act(found.run.tenant),
        "terminal": found.run.state in RUN_TERMINAL,
    }


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str, state_: State, principal: UiPrincipal) -> HTMLResponse:
    return page(request, "run.html", principal=principal, **_run_context(state_, principal, run_id))


@router.get("/runs/{run_id}/live")
def run_live(request: Request, run_id: str, state_: State, principal: UiPrincipal) -> HTMLResponse:
    return page(request, "_run_live.html", **_run_context(state_, principal, run_id))


async def _act_from_form(
    request: Request, state_: State, principal: Any, run_id: str, kind: Kind
) -> RedirectResponse:
    form = await request.form()
    check_csrf(request, form)
    reason = str(form.get("reason") or "").strip()
    step = str(form.get("from_step") or "").strip() or None
    if kind == "replay_run" and form.get("step_only") and step:
        kind = "replay_step"
    if not reason:
        request.session["flash"] = {"level": "error", "text": "a reason is required"}
    else:
        try:
            sent = act(state_, principal, run_id, kind, reason[:2000], step)
            request.session["flash"] = {
                "level": "info",
                "text": f"{kind} sent (command {sent['command_id']}); the router's decision appears below",
            }
        except HTTPException as exc:
            detail = exc.detail if isinstance(exc.detail, dict) else {"message": str(exc.detail)}
            request.session["flash"] = {"level": "error", "text": detail["message"]}
    return RedirectResponse(f"/runs/{run_id}", status_code=303)


@router.post("/runs/{run_id}/replay")
async def replay_form(
    request: Request, run_id: str, state_: State, principal: UiPrincipal
) -> RedirectResponse:
    return await _act_from_form(request, state_, principal, run_id, "replay_run")


@router.post("/runs/{run_id}/cancel")
async def cancel_form(
    request: Request, run_id: str, state_: State, principal: UiPrincipal
) -> RedirectResponse:
    return await _act_from_form(request, state_, principal, run_id, "cancel")


@router.get("/dead-letters")
def dead_letters_page(
    request: Request,
    state_: State,
    principal: UiPrincipal,
    tenant: str | None = None,
    error_kind: str | None = None,
    cursor: str | None = None,
) -> HTMLResponse:
    f = reads.DeadLetterFilter(tenant=tenant or None, error_kind=error_kind or None)
    with state_.session() as session:
        try:
            rows, next_cursor = reads.list_dead_letters(session, principal.readable, f, 50, cursor)
        except ValueError:
            rows, next_cursor = [], None
    return page(
        request,
        "dead_letters.html",
        principal=principal,
        rows=[present.dead_letter_summary(r) for r in rows],
        f=f,
        next_query=_query(request, cursor=next_cursor) if next_cursor else None,
    )


@router.get("/dead-letters/{dlq_id}")
def dead_letter_page(request: Request, dlq_id: str, state_: State, principal: UiPrincipal) -> HTMLResponse:
    with state_.session() as session:
        row = reads.dead_letter(session, principal.readable, dlq_id)
    if row is None:
        raise HTTPException(404, f"no dead letter {dlq_id!r} that you may see")
    return page(request, "dead_letter.html", principal=principal, dl=present.dead_letter_detail(row))


@router.get("/tenants")
def tenants_page(request: Request, state_: State, principal: UiPrincipal) -> HTMLResponse:
    with state_.session() as session:
        rows = [tenant_view(r) for r in reads.list_tenants(session, principal.readable)]
    return page(request, "tenants.html", principal=principal, tenants=rows)


@router.get("/tenants/{tenant}")
def tenant_page(request: Request, tenant: str, state_: State, principal: UiPrincipal) -> HTMLResponse:
    with state_.session() as session:
        usage = reads.tenant_usage(session, principal.readable, tenant)
    if usage is None:
        raise HTTPException(404, f"no tenant {tenant!r} that you may see")
    return page(
        request,
        "tenant.html",
        principal=principal,
        t=tenant_view(usage.tenant),
        usage=usage,
        failures=[present.run_summary(r) for r in usage.recent_failures],
        grafana=grafana_link(state_, tenant),
        definitions=[e for e in state_.definition_entries(principal.readable) if e.tenant == tenant],
    )
