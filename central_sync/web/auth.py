"""Server-side sessions, CSRF tokens (also on the login form), login rate limiting and the
access log.

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
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request

from central_sync.errors import AuthError
from central_sync.store.desk_tables import DeskTables
from central_sync.users import Role, User, UserStore
from central_sync.web_settings import WebSettings
from edge.logs import log_event

log = logging.getLogger("central.web.auth")

COOKIE = "kentongan_session"
#: Double-submit cookie of the login form (there is no session yet to hold a CSRF token).
LOGIN_CSRF_COOKIE = "kentongan_login_csrf"
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
    """Stops password guessing without locking the owner out (nothing here is per user alone).

    * per (user name, address): ``login_limit`` failures are free, then each further attempt
      waits 1, 2, 4 ... seconds after the previous failure, capped at ``login_window_s``;
      failures are remembered for a day, a success from that address forgets them;
    * per address: at most ``login_address_limit`` failures (any user names) in
      ``login_window_s``, then that address waits;
    * the right password from another address is never slowed by guesses from this one.

    State is the desk's ``web_login_attempts`` table (``DeskTables``, on either store backend:
    shared by every central process using the store, and kept across restarts). The ``limits``
    library was not taken: it has no SQL storage (only memory, Redis, Memcached, MongoDB) and
    counts fixed or moving windows, not a per-key growing delay.
    """

    MEMORY_S = 86400.0

    def __init__(self, tables: DeskTables, settings: WebSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.tables, self.settings, self.clock = tables, settings, clock

    @staticmethod
    def _pair_key(name: str, client: str) -> str:
        return f"ua:{name.lower()[:64]}|{client[:64]}"

    @staticmethod
    def _address_key(client: str) -> str:
        return f"ip:{client[:64]}"

    def delay_after(self, failures: int) -> float:
        """Seconds to wait after the latest failure, given ``failures`` for (user, address)."""
        if failures < self.settings.login_limit:
            return 0.0
        return float(min(2.0 ** min(failures - self.settings.login_limit, 30),
                         self.settings.login_window_s))

    def check(self, name: str, client: str) -> None:
        """``RateLimited`` when this attempt must wait."""
        now = self.clock()
        window = self.settings.login_window_s
        ip = self.tables.login_attempts(self._address_key(client), now - window)
        limit = self.settings.login_address_limit
        if len(ip) >= limit:
            retry = ip[len(ip) - limit] + window - now
            log_event(log, "login_rate_limited", logging.WARNING, scope="address", client=client)
            raise RateLimited(max(1.0, retry))
        pair = self.tables.login_attempts(self._pair_key(name, client), now - self.MEMORY_S)
        wait = self.delay_after(len(pair)) - (now - pair[-1]) if pair else 0.0
        if wait > 0:
            log_event(log, "login_rate_limited", logging.WARNING, scope="user_address",
                      user=name[:64], client=client, failures=len(pair))
            raise RateLimited(max(1.0, wait))

    def failed(self, name: str, client: str) -> None:
        now = self.clock()
        self.tables.record_failed_login([self._pair_key(name, client), self._address_key(client)],
                                        now, now - self.MEMORY_S)

    def succeeded(self, name: str, client: str) -> None:
        self.tables.clear_login_attempts(self._pair_key(name, client))


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
