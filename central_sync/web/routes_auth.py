"""Login, logout and "who am I" (HTML form and JSON)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from central_sync.errors import AuthError
from central_sync.users import User
from central_sync.web.auth import (
    COOKIE,
    Principal,
    RateLimited,
    check_csrf,
    client_address,
    optional_principal,
    principal,
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
                            headers={"Retry-After": str(int(exc.retry_after))}) from None
    try:
        user = ctx.users.verify(username, password)
    except AuthError:
        ctx.limiter.failed(username, client)
        log_event(log, "login_failed", logging.WARNING, user=username[:64], client=client)
        raise HTTPException(401, "wrong user name or password") from None
    ctx.limiter.succeeded(username)
    token, _csrf = ctx.sessions.create(user, client)
    log_event(log, "login", user=user.name, role=user.role.value, client=client)
    return user, token


def _set_cookie(ctx: WebContext, response: Response, token: str) -> None:
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict",
                        secure=ctx.settings.cookie_secure,
                        max_age=int(ctx.settings.session_hours * 3600), path="/")


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request) -> Response:
    ctx = ctx_of(request)
    return ctx.templates.TemplateResponse(request, "login.html", {"error": None})


@router.post("/login", include_in_schema=False)
def login_form(request: Request, username: Annotated[str, Form(max_length=64)],
               password: Annotated[str, Form(max_length=256)]) -> Response:
    ctx = ctx_of(request)
    try:
        _user, token = _login(ctx, request, username, password)
    except HTTPException as exc:
        return ctx.templates.TemplateResponse(
            request, "login.html", {"error": exc.detail}, status_code=exc.status_code)
    response = RedirectResponse("/", status_code=303)
    _set_cookie(ctx, response, token)
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
