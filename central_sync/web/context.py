"""Everything a request handler needs, built once per app (``request.app.state.ctx``)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from fastapi import Request
from fastapi.templating import Jinja2Templates

from central_sync.audit import AuditLog
from central_sync.cap import WIB
from central_sync.config import CentralConfig
from central_sync.store import Store
from central_sync.store.desk_tables import DeskTables
from central_sync.users import DEFAULT_HASHER, UserStore
from central_sync.web.attention import AttentionView
from central_sync.web.auth import AccessLog, LoginLimiter, SessionManager
from central_sync.web.body_cache import DeskBodies
from central_sync.web.desk import CommandSender, Desk
from central_sync.web.live import LiveHub
from central_sync.web_settings import WebSettings
from edge.sealing import Unsealer

log = logging.getLogger("central.web")
#: What the app is configured from: central's config, or a mapping with a ``web`` section (tests).
ConfigSource = CentralConfig | Mapping[str, Any]
HERE = Path(__file__).resolve().parent


@dataclass
class WebContext:
    settings: WebSettings
    tables: DeskTables
    store: Store
    users: UserStore
    sessions: SessionManager
    limiter: LoginLimiter
    access: AccessLog
    hub: LiveHub
    desk: Desk
    templates: Jinja2Templates
    audit: AuditLog
    unsealer: Unsealer | None = None
    cap_sender: str = "kentongan-central@localhost"
    bodies: DeskBodies = field(default_factory=DeskBodies)  # render-once caches (cached_views)
    attention: AttentionView = field(default_factory=AttentionView)  # the P1 banner (attention.py)


def fmt_time(ts: float | None) -> str:
    """Local time in WIB (UTC+7), the command centre's clock."""
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(float(ts), WIB).strftime("%Y-%m-%d %H:%M:%S WIB")


def load_unsealer(settings: WebSettings) -> Unsealer | None:
    if not settings.unseal_key_file:
        return None
    return Unsealer.from_file(settings.unseal_key_file)


def build_context(cfg: ConfigSource, store: Store, commands: CommandSender | None,
                  settings: WebSettings | None = None, *,
                  hasher: PasswordHasher = DEFAULT_HASHER) -> WebContext:
    """``hasher``: the accounts' password hasher (``UserStore``; only tests pass another)."""
    settings = settings or WebSettings.from_config(cfg)
    tables = store.desk()
    users = UserStore(tables, hasher)
    # Stream ids are the store's durable incident change numbers (live.py).
    hub = LiveHub(replay=settings.stream_replay, start=tables.incident_change_head())
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["fmt_time"] = fmt_time
    return WebContext(
        settings=settings, tables=tables, store=store, users=users,
        sessions=SessionManager(tables, users, settings), limiter=LoginLimiter(tables, settings),
        access=AccessLog(tables), hub=hub, desk=Desk(store, commands, settings, hub),
        templates=templates, audit=AuditLog(store.audit_tables()), unsealer=load_unsealer(settings),
        cap_sender=settings.cap_sender)


def ctx_of(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx
