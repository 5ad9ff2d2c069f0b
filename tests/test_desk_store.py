"""The desk on every store backend: its tables (users, sessions, login attempts, access log,
warnings, state), a web app that learns of incidents committed by another process, and live-stream
ids that are the store's durable incident change numbers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central_sync.errors import AuthError
from central_sync.incidents import State
from central_sync.store import CentralStore, Store, open_store
from central_sync.users import Role, RtRef, UserStore
from central_sync.web.app import context_of, create_app
from central_sync.web.live import LiveChange
from central_sync.web.testing import RecordingSender, event, presence, register


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
            for node_id, rw in (("pos-a", 5), ("pos-b", 5), ("pos-z", 9)):  # enrolled places
                register(ingest_store, node_id, f"33.74.01.1001/{rw}/3")
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


def test_stream_ids_are_the_stores_change_numbers_in_every_web_process(store_url: str) -> None:
    """Two web processes on one store hand out the same live-stream id for the same incident
    change (the store's durable change number), each learns of the other's changes, and a
    process started later (a restart) replays from the store what a browser missed."""
    stores = [open_store(store_url) for _ in range(3)]
    a, b = (context_of(create_app({"web": {}}, s, RecordingSender(), follow_changes=False))
            for s in stores[:2])
    try:
        stores[0].apply_node_updates([presence("pos-a")], [], time.time())
        panic = event("pos-a", "PANIC")
        stores[0].commit_events([panic], time.time())
        a.desk.on_events(stores[0].get_events([panic.event_id]))       # process A groups it
        incident_id = a.desk.book.incident_of_event(panic.event_id)
        assert incident_id is not None
        opened = a.hub.head
        assert b.desk.publish_changes() == 1 and b.hub.head == opened  # same id in process B
        b.desk.on_events(stores[1].get_events([panic.event_id]))       # already grouped by A
        assert b.hub.head == opened
        a.desk.book.step(incident_id, State.ACKNOWLEDGED, "op", "on my way")
        a.desk.publish_changes()
        acked = a.hub.head
        assert acked > opened
        b.desk.publish_changes()
        assert b.hub.head == acked and b.hub.missed_since(opened) == [LiveChange(acked, incident_id)]

        c = context_of(create_app({"web": {}}, stores[2], RecordingSender(), follow_changes=False))
        assert c.hub.head == acked and not c.hub.can_replay(opened)    # a fresh ring
        backlog = c.desk.backlog_since(opened, 100)
        assert backlog is not None
        assert c.hub.missed_since(opened, backlog) == [LiveChange(acked, incident_id)]
        assert c.hub.missed_since(opened) is None                      # without the store: resync
        assert c.desk.backlog_since(acked + 1000, 100) is None         # not an id we handed out
        assert c.desk.backlog_since(0, 0) is None                      # more than the limit
    finally:
        for s in stores:
            s.close()


def test_incident_change_reads_use_their_index(tmp_path: Path) -> None:
    """Publishing runs after every incident change and once a second per web process: its
    reads (and the number taken in each incident transaction) are index look-ups (SQLite)."""
    store = CentralStore(tmp_path / "central.db")
    try:
        for sql in ("SELECT change_seq, incident_id FROM incidents WHERE change_seq > 0 "
                    "ORDER BY change_seq LIMIT 10",
                    "SELECT COALESCE(MAX(change_seq), 0) AS seq FROM incidents"):
            plan = " ".join(str(r[3]) for r in store.connection().execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "incidents_change_seq" in plan, plan
    finally:
        store.close()


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


def test_desk_reads_wait_neither_for_the_writing_connection_nor_for_another_writer(tmp_path: Path) -> None:
    """A desk read (``SqlRunner.read``) takes no SQLite write lock and does not queue behind
    this process's writing connection (held by a writer that may itself be waiting for the
    write lock); a read inside a transaction still sees that transaction's writes."""
    import sqlite3
    import threading

    store = CentralStore(tmp_path / "central.db")
    other = sqlite3.connect(str(tmp_path / "central.db"), isolation_level=None)
    try:
        tables = store.desk()
        tables.set_state("k", "v1")
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        held, release = threading.Event(), threading.Event()

        def writer_waiting() -> None:
            with store.lock:  # this process's writing connection, busy
                held.set()
                release.wait(30)

        t = threading.Thread(target=writer_waiting)
        t.start()
        assert held.wait(30)
        done: list[str] = []
        reader = threading.Thread(target=lambda: done.append(tables.get_state("k")))
        reader.start()
        reader.join(10)
        assert done == ["v1"], "the read waited for a writer"
        release.set()
        t.join(30)
        other.execute("ROLLBACK")
        with store.desk().runner.tx() as tx:
            tx.run("INSERT INTO web_state(key, value) VALUES ('k2', 'mine')")
            assert tables.get_state("k2") == "mine"  # own uncommitted write
        assert tables.get_state("k2") == "mine"
    finally:
        other.close()
        store.close()
