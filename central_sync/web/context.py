"""Everything a request handler needs, built once per app (``request.app.state.ctx``)."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from central_sync.audit import AuditLog
from central_sync.cap import WIB
from central_sync.errors import CentralConfigError
from central_sync.users import UserStore
from central_sync.web.auth import AccessLog, LoginLimiter, SessionManager
from central_sync.web.db import WebDB
from central_sync.web.desk import CommandSender, Desk
from central_sync.web.live import LiveHub
from central_sync.web.settings import WebSettings

log = logging.getLogger("central.web")
HERE = Path(__file__).resolve().parent


@dataclass
class WebContext:
    settings: WebSettings
    db: WebDB
    store: Any
    users: UserStore
    sessions: SessionManager
    limiter: LoginLimiter
    access: AccessLog
    hub: LiveHub
    desk: Desk
    templates: Jinja2Templates
    unsealer: Any = None
    cap_sender: str = "kentongan-central@localhost"
    audit: AuditLog | None = None


def fmt_time(ts: float | None) -> str:
    """Local time in WIB (UTC+7), the command centre's clock."""
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(float(ts), WIB).strftime("%Y-%m-%d %H:%M:%S WIB")


def store_path(cfg: Any, store: Any) -> str:
    """Path of central's SQLite file (the web tables live beside the store's)."""
    for obj, attr in ((store, "path"), (store, "db_path"), (cfg, "database"), (cfg, "db_path"),
                      (getattr(cfg, "store", None), "path"),
                      (getattr(cfg, "storage", None), "db_path"),
                      (getattr(cfg, "storage", None), "path")):
        value = getattr(obj, attr, None) if obj is not None else None
        if value:
            return str(value)
    raise CentralConfigError("cannot find central's database path for the web tables")


def load_unsealer(settings: WebSettings) -> Any:
    if not settings.unseal_key_file:
        return None
    from edge.sealing import Unsealer

    return Unsealer.from_file(settings.unseal_key_file)


def build_context(cfg: Any, store: Any, commands: CommandSender | None,
                  settings: WebSettings | None = None) -> WebContext:
    settings = settings or WebSettings.from_config(cfg)
    db = WebDB.on_store(store) if hasattr(store, "connection") else WebDB(
        store_path(cfg, store))
    users = UserStore(db)
    hub = LiveHub()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["fmt_time"] = fmt_time
    return WebContext(
        settings=settings, db=db, store=store, users=users,
        sessions=SessionManager(db, users, settings), limiter=LoginLimiter(db, settings),
        access=AccessLog(db), hub=hub, desk=Desk(db, store, commands, settings, hub),
        templates=templates, unsealer=load_unsealer(settings), cap_sender=settings.cap_sender,
        audit=_audit_log(cfg, store))


def _audit_log(cfg: Any, store: Any) -> AuditLog | None:
    """The audit table beside the store's tables (SQLite); None when the store has no file."""
    try:
        return AuditLog.open(store_path(cfg, store))
    except (CentralConfigError, OSError, sqlite3.Error) as exc:
        log.warning("audit log unavailable: %s", exc)
        return None


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx
