"""Login, logout, "who am I" (HTML form and JSON) and the admin audit log.

The HTML login form carries a CSRF token (double-submit: the same random value in a
SameSite=Strict cookie and a hidden field), so another site cannot log a desk browser into an
attacker's account. ``/api/login`` takes ``application/json`` only, which a cross-site form
cannot send without a CORS preflight (none is allowed).
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from central_sync.errors import AuthError
from central_sync.users import Role, User
from central_sync.web.auth import (
    COOKIE,
    LOGIN_CSRF_COOKIE,
    Principal,
    RateLimited,
    check_csrf,
    client_address,
    optional_principal,
    principal,
    require_roles,
)
from central_sync.web.context import WebContext, ctx_of
from edge.logs import log_event

log = logging.getLogger("central.web.auth")
router = APIRouter()


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class MeOut(BaseModel):
    name: str
    role: str
    rts: list[str]
    csrf_token: str


def _me(who: Principal) -> MeOut:
    return MeOut(name=who.user.name, role=who.user.role.value,
                 rts=sorted(str(r) for r in who.user.rts), csrf_token=who.csrf)


def _login(ctx: WebContext, request: Request, username: str, password: str) -> tuple[User, str]:
    client = client_address(request)
    try:
        ctx.limiter.check(username, client)
    except RateLimited as exc:
        raise HTTPException(429, "too many login attempts",
                            headers={"Retry-After": str(math.ceil(exc.retry_after))}) from None
    try:
        user = ctx.users.verify(username, password)
    except AuthError:
        ctx.limiter.failed(username, client)
        log_event(log, "login_failed", logging.WARNING, user=username[:64], client=client)
        raise HTTPException(401, "wrong user name or password") from None
    ctx.limiter.succeeded(username, client)
    token, _csrf = ctx.sessions.create(user, client)
    log_event(log, "login", user=user.name, role=user.role.value, client=client)
    return user, token


def _set_cookie(ctx: WebContext, response: Response, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=ctx.settings.cookie_secure,
                        max_age=int(ctx.settings.session_hours * 3600), path="/")


def _login_page(request: Request, error: str | None, status_code: int = 200,
                headers: dict[str, str] | None = None) -> Response:
    """The login form with a fresh CSRF token (also set as the double-submit cookie)."""
    ctx = ctx_of(request)
    token = secrets.token_urlsafe(32)
    response = ctx.templates.TemplateResponse(
        request, "login.html", {"error": error, "login_csrf": token}, status_code=status_code,
        headers=headers)
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=ctx.settings.cookie_secure, max_age=3600, path="/login")
    return response


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request) -> Response:
    return _login_page(request, None)


@router.post("/login", include_in_schema=False)
def login_form(request: Request, username: Annotated[str, Form(max_length=64)],
               password: Annotated[str, Form(max_length=256)],
               csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
    ctx = ctx_of(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not csrf_token or not hmac.compare_digest(
            csrf_token.encode(), expected.encode()):
        log_event(log, "login_csrf_rejected", logging.WARNING, client=client_address(request))
        return _login_page(request, "The form expired; please log in again.", 403)
    try:
        _user, token = _login(ctx, request, username, password)
    except HTTPException as exc:
        return _login_page(request, str(exc.detail), exc.status_code, dict(exc.headers or {}))
    response = RedirectResponse("/", status_code=303)
    _set_cookie(ctx, response, token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/api/login", response_model=MeOut,
             responses={401: {"description": "wrong credentials"},
                        429: {"description": "rate limited"}})
def api_login(request: Request, body: LoginIn) -> Response:
    """Log in; the session is a cookie, and state-changing calls need ``csrf_token``."""
    ctx = ctx_of(request)
    _user, token = _login(ctx, request, body.username, body.password)
    who = ctx.sessions.lookup(token, client_address(request))
    assert who is not None
    response = JSONResponse(_me(who).model_dump())
    _set_cookie(ctx, response, token)
    return response


@router.get("/api/audit-log")
def audit_log(request: Request, who: Annotated[Principal, Depends(principal)],
              limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict[str, Any]]:
    """Administrative actions, newest first: accounts, commands sent, enrolments and
    revocations (admins only)."""
    require_roles(who, Role.ADMIN)
    return ctx_of(request).audit.recent(limit)


@router.get("/api/me", response_model=MeOut)
def me(who: Annotated[Principal, Depends(principal)]) -> MeOut:
    return _me(who)


@router.post("/logout", include_in_schema=False)
async def logout(request: Request) -> Response:
    ctx = ctx_of(request)
    who = optional_principal(request)
    if who is not None:
        await check_csrf(request, who)
        ctx.sessions.destroy(request.cookies.get(COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def page_principal(request: Request) -> Principal | Any:
    """The user of a page request, or a redirect to the login page."""
    who = optional_principal(request)
    if who is None:
        return RedirectResponse("/login", status_code=303)
    return who
