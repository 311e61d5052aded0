"""The console application: API router, UI router, sessions, static files, lifecycle."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from services.config import Settings
from services.console import api, ui
from services.console.auth import LoginRequired
from services.console.config import ConsoleSettings
from services.console.state import ConsoleState

API_VERSION = "1"


def create_app(settings: Settings, console: ConsoleSettings | None = None) -> FastAPI:
    console = console or ConsoleSettings()
    state = ConsoleState.create(settings, console)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="Switchyard console",
        version=API_VERSION,
        description="Runs, history, dead letters and tenants of a Switchyard engine; replay and cancel "
        "through control commands; a webhook trigger endpoint. Authenticate with "
        "`Authorization: Bearer <token>`.",
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.console = state
    secret = console.secret.get_secret_value() if console.secret else secrets.token_urlsafe(32)
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="switchyard_console",
        max_age=console.session_max_age_s,
        same_site="strict",
        https_only=console.secure_cookies,
    )
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static")
    app.include_router(api.router)
    app.include_router(ui.router)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _: LoginRequired) -> Response:
        if request.url.path.endswith("/live") or request.url.path.endswith("/counts"):
            return Response(status_code=401)  # a polled fragment: the script stops, no page in a div
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def errors(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/v1") or request.url.path.startswith("/static"):
            return await http_exception_handler(request, exc)
        message = exc.detail["message"] if isinstance(exc.detail, dict) else str(exc.detail)
        return ui.page(request, "error.html", status_code=exc.status_code, message=message)

    return app
