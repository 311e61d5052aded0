"""Authentication for the API (bearer operator tokens) and the UI (signed session cookies with a
CSRF token per session), both resolving to a :class:`~services.console.scope.Principal`."""

from __future__ import annotations

import hmac
import secrets
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.console.accounts import principal_for_token, principal_named
from services.console.scope import Principal
from services.console.state import ConsoleState

bearer = HTTPBearer(auto_error=False, description="An operator token: `switchyard console user add`.")


def refusal(status: int, error: str, message: str) -> HTTPException:
    """An HTTP refusal whose body says what (``error``, stable) and why (``message``)."""
    return HTTPException(status_code=status, detail={"error": error, "message": message})


def console_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


State = Annotated[ConsoleState, Depends(console_state)]


def api_principal(
    state: State, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    if credentials is None:
        raise HTTPException(
            status_code=401,
            detail={"error": "unauthenticated", "message": "send Authorization: Bearer <operator token>"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    with state.session() as session:
        principal = principal_for_token(session, credentials.credentials)
    if principal is None:
        raise HTTPException(
            status_code=401,
            detail={"error": "bad_token", "message": "unknown, revoked or malformed operator token"},
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


ApiPrincipal = Annotated[Principal, Depends(api_principal)]


class LoginRequired(Exception):
    """Raised by UI pages without a valid session; the app turns it into a redirect to /login."""


def ui_principal(request: Request, state: State) -> Principal:
    name = request.session.get("operator")
    if not isinstance(name, str):
        raise LoginRequired
    with state.session() as session:
        principal = principal_named(session, name)
    if principal is None:  # disabled or deleted since login
        request.session.clear()
        raise LoginRequired
    return principal


UiPrincipal = Annotated[Principal, Depends(ui_principal)]


def csrf_token(request: Request) -> str:
    """The session's CSRF token (made on first use); forms carry it in a hidden field."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, form: Any) -> None:
    expected = request.session.get("csrf")
    sent = form.get("csrf_token")
    if not isinstance(expected, str) or not isinstance(sent, str) or not hmac.compare_digest(expected, sent):
        raise refusal(403, "csrf", "the form's CSRF token is missing or does not match the session")
