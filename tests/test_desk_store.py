"""The desk on every store backend: its tables (users, sessions, login attempts, access log,
warnings, state) and a web app that learns of incidents committed by another process."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from central_sync.errors import AuthError
from central_sync.store import Store, open_store
from central_sync.users import Role, RtRef, UserStore
from central_sync.web.app import context_of, create_app
from central_sync.web.testing import RecordingSender, event, presence


def test_desk_tables_round_trip(any_store: Store) -> None:
    tables = any_store.desk()
    users = UserStore(tables)
    users.add("op", "operator", "correct horse battery")
    users.add("ketua", "rt_admin", "correct horse battery", [RtRef("33.74.01.1001", 5, 3)])
    assert users.verify("op", "correct horse battery").role is Role.OPERATOR
    assert users.get("ketua") is not None and users.get("ketua").rts == {RtRef("33.74.01.1001", 5, 3)}  # type: ignore[union-attr]
    assert [u.name for u in users.all_users()] == ["ketua", "op"]
    assert not tables.add_user("op", "admin", "x", 1.0, [])  # a name is taken once
    now = time.time()
    tables.create_session("digest-1", "op", "csrf-1", now, now + 60, "127.0.0.1")
    assert tables.session("digest-1") == {"name": "op", "csrf": "csrf-1", "expires_at": now + 60}
    tables.delete_session("digest-1")
    assert tables.session("digest-1") is None
    tables.record_failed_login(["user:op", "ip:127.0.0.1"], now, now - 300)
    tables.record_failed_login(["user:op", "ip:127.0.0.1"], now + 1, now - 300)
    assert tables.login_attempts("user:op", now - 10) == [now, now + 1]
    tables.clear_login_attempts("user:op")
    assert tables.login_attempts("user:op", now - 10) == [] and len(tables.login_attempts("ip:127.0.0.1", 0)) == 2
    tables.log_access(now, "op", "operator", "view_snapshot", "snapshot", "s1", "127.0.0.1", False)
    (row,) = tables.access_log(10)
    assert row["user"] == "op" and row["allowed"] == 0
    assert not tables.recent_warning("pos-a", "false_alarms", now - 10)
    tables.add_warning(now, "pos-a", "false_alarms", "3 false alarms")
    assert tables.recent_warning("pos-a", "false_alarms", now - 10) and tables.warnings(5)[0]["message"]
    tables.set_state("last_rowid", "5")
    tables.set_state("last_rowid", "7")
    assert tables.get_state("last_rowid") == "7" and tables.get_state("nope", "d") == "d"


def test_web_app_follows_commits_of_another_process(store_url: str) -> None:
    """The web process opens its own store; an 'ingest' store commits a post and a PANIC: the
    dashboard's post table and incident list pick them up from the change feed, and the RW's
    other post is warned (routing by the RW index)."""
    web_store, ingest_store = open_store(store_url), open_store(store_url)
    sender = RecordingSender()
    app = create_app({"web": {}}, web_store, sender)
    ctx = context_of(app)
    try:
        with TestClient(app):
            ingest_store.apply_node_updates([presence("pos-a"), presence("pos-b"),
                                             presence("pos-z", rw=9)], [], time.time())
            panic = event("pos-a", "PENCURIAN")
            assert ingest_store.commit_events([panic], time.time()).inserted == [panic.event_id]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    ctx.desk.book.incident_of_event(panic.event_id) and sender.actions("sound")):
                time.sleep(0.05)
            assert ctx.desk.book.incident_of_event(panic.event_id) is not None
            assert set(ctx.desk.nodes()) == {"pos-a", "pos-b", "pos-z"}
            assert [c.node_id for c in sender.actions("sound")] == ["pos-b"]  # same RW only
    finally:
        web_store.close()
        ingest_store.close()


def test_audit_log_on_every_backend(any_store: Store) -> None:
    from central_sync.audit import MAX_DETAIL_CHARS, AuditLog

    audit = AuditLog(any_store.audit_tables())
    assert audit.recent() == []
    audit.record("cli:root", "enrol", "pos-a", {"replace": False})
    audit.record("boss", "command_sound", "pos-a", {"role": "admin"}, client="127.0.0.1")
    audit.record("boss", "user_add", "x" * 500, {"blob": "y" * (MAX_DETAIL_CHARS * 2)})
    newest, sound, enrol = audit.recent()
    assert (sound["actor"], sound["action"], sound["target"], sound["client"]) == \
        ("boss", "command_sound", "pos-a", "127.0.0.1")
    assert sound["detail"] == {"role": "admin"} and enrol["detail"] == {"replace": False}
    assert enrol["client"] is None and enrol["id"] < sound["id"] < newest["id"]
    assert len(newest["target"]) == 200 and set(newest["detail"]) == {"truncated"}
    assert [r["action"] for r in audit.recent(limit=1)] == ["user_add"]
    # a fresh handle on the same store (another process) reads the same rows
    again = open_store(any_store.url)
    try:
        assert [r["action"] for r in AuditLog(again.audit_tables()).recent()] == \
            ["user_add", "command_sound", "enrol"]
    finally:
        again.close()
    assert audit.prune(3600) == 0 and len(audit.recent()) == 3
    time.sleep(0.01)
    assert audit.prune(0) == 3 and audit.recent() == []


def test_user_remove_and_set_role_on_every_backend(any_store: Store) -> None:
    tables = any_store.desk()
    users = UserStore(tables)
    users.add("op", "operator", "correct horse battery")
    now = time.time()
    tables.create_session("digest-op", "op", "csrf", now, now + 60, "127.0.0.1")
    rts = [RtRef("33.74.01.1001", 5, 3), RtRef("33.74.01.1001", 5, 4)]
    assert users.set_role("op", "rt_admin", rts).role is Role.RT_ADMIN
    assert users.get("op") == users.set_role("op", "rt_admin", rts)  # idempotent
    assert users.get("op").rts == set(rts)  # type: ignore[union-attr]
    assert users.set_role("op", "admin").rts == frozenset() and tables.user_rts("op") == []
    users.remove("op")
    assert users.get("op") is None and tables.session("digest-op") is None
    with pytest.raises(AuthError):
        users.remove("op")
    with pytest.raises(AuthError):
        users.set_role("op", "operator")


def test_login_limiter_on_every_backend(any_store: Store) -> None:
    from central_sync.web.auth import LoginLimiter, RateLimited
    from central_sync.web_settings import WebSettings

    now = [1_000_000.0]
    settings = WebSettings(login_limit=2, login_address_limit=100, login_window_s=600)
    limiter = LoginLimiter(any_store.desk(), settings, clock=lambda: now[0])
    for _ in range(2):
        limiter.check("op", "10.0.0.1")
        limiter.failed("op", "10.0.0.1")
    with pytest.raises(RateLimited) as err:
        limiter.check("op", "10.0.0.1")
    assert err.value.retry_after == 1.0
    limiter.check("op", "10.0.0.2")  # the owner at another address is not slowed
    now[0] += 1.5
    limiter.check("op", "10.0.0.1")
    limiter.succeeded("op", "10.0.0.1")
    limiter.failed("op", "10.0.0.1")
    limiter.check("op", "10.0.0.1")  # a success forgot the earlier failures
