"""Server-side sessions, CSRF tokens, login rate limiting and the access log.

A session is a random token (only its SHA-256 is stored) in an HttpOnly, SameSite=Strict cookie,
Secure when ``web.cookie_secure``. Each session has its own CSRF token that every state-changing
request must echo in the ``X-CSRF-Token`` header or the ``csrf_token`` form field.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request

from central_sync.errors import AuthError
from central_sync.store.desk_tables import DeskTables
from central_sync.users import Role, User, UserStore
from central_sync.web_settings import WebSettings
from edge.logs import log_event

log = logging.getLogger("central.web.auth")

COOKIE = "kentongan_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RateLimited(AuthError):
    """Too many login attempts; ``retry_after`` seconds until the next one is allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many login attempts")
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Principal:
    """The logged-in user of one request."""

    user: User
    csrf: str
    client: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class SessionManager:
    def __init__(self, tables: DeskTables, users: UserStore, settings: WebSettings) -> None:
        self.tables, self.users, self.settings = tables, users, settings

    def create(self, user: User, client: str) -> tuple[str, str]:
        """Start a session; return (cookie token, CSRF token)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        self.tables.create_session(_digest(token), user.name, csrf, now,
                                   now + self.settings.session_hours * 3600, client)
        return token, csrf

    def lookup(self, token: str | None, client: str) -> Principal | None:
        if not token or len(token) > 200:
            return None
        row = self.tables.session(_digest(token))
        if row is None or row["expires_at"] < time.time():
            return None
        user = self.users.get(row["name"])
        return Principal(user, row["csrf"], client) if user else None

    def destroy(self, token: str | None) -> None:
        if token:
            self.tables.delete_session(_digest(token))


class LoginLimiter:
    """At most ``login_limit`` failed attempts per user name and per client in the window."""

    def __init__(self, tables: DeskTables, settings: WebSettings) -> None:
        self.tables, self.settings = tables, settings

    def _keys(self, name: str, client: str) -> tuple[str, str]:
        return f"user:{name.lower()[:64]}", f"ip:{client}"

    def check(self, name: str, client: str) -> None:
        now = time.time()
        since = now - self.settings.login_window_s
        for key in self._keys(name, client):
            times = self.tables.login_attempts(key, since)
            if len(times) >= self.settings.login_limit:
                retry = times[0] + self.settings.login_window_s - now
                log_event(log, "login_rate_limited", logging.WARNING, key=key)
                raise RateLimited(max(1.0, retry))

    def failed(self, name: str, client: str) -> None:
        now = time.time()
        self.tables.record_failed_login(self._keys(name, client), now,
                                        now - self.settings.login_window_s)

    def succeeded(self, name: str) -> None:
        self.tables.clear_login_attempts(self._keys(name, "")[0])


class AccessLog:
    """Who viewed which snapshot or report, when and from where (UU PDP breach reporting)."""

    def __init__(self, tables: DeskTables) -> None:
        self.tables = tables

    def record(self, principal: Principal, action: str, object_kind: str, object_id: str,
               allowed: bool = True) -> None:
        self.tables.log_access(time.time(), principal.user.name, principal.user.role.value, action,
                               object_kind, object_id, principal.client, allowed)
        log_event(log, "access", user=principal.user.name, action=action, object_kind=object_kind,
                  object_id=object_id, client=principal.client, allowed=allowed)

    def recent(self, limit: int = 200) -> list[dict[str, object]]:
        return self.tables.access_log(limit)


def _sessions(request: Request) -> SessionManager:
    sessions: SessionManager = request.app.state.ctx.sessions
    return sessions


def optional_principal(request: Request) -> Principal | None:
    return _sessions(request).lookup(request.cookies.get(COOKIE), client_address(request))


def principal(request: Request) -> Principal:
    """FastAPI dependency: the logged-in user, 401 otherwise."""
    found = optional_principal(request)
    if found is None:
        raise HTTPException(401, "login required")
    return found


async def check_csrf(request: Request, who: Principal) -> None:
    """403 unless a state-changing request carries the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent.encode(), who.csrf.encode()):
        log_event(log, "csrf_rejected", logging.WARNING, user=who.user.name,
                  path=request.url.path)
        raise HTTPException(403, "missing or wrong CSRF token")


def require_roles(who: Principal, *roles: Role) -> None:
    if who.user.role not in roles:
        raise HTTPException(403, "not allowed for this role")
