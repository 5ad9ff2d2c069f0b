"""``kentongan-central store copy``: an SQLite store into a real PostgreSQL (started by the tests),
every table, counts verified; run twice it copies nothing twice; killed mid-way it resumes; a
target holding other data is refused unless --merge; errors are one line, never a traceback."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from central_sync.store import CentralStore, open_store
from central_sync.users import UserStore
from central_sync.web.testing import event
from edge.sync.wire import Presence, SnapshotEnvelope

DAY = 86400.0
NOW = time.time()


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "central_sync.cli", "store", "copy", *args],
                          capture_output=True, text=True, timeout=timeout)


def _populate(path: Path, events: int = 300) -> CentralStore:
    store = CentralStore(path)
    times = [NOW - 400 * DAY, NOW - 40 * DAY, NOW]
    evs = [event(f"pos-{i % 3}", "PANIC", payload={"n": i, "reporter": "Budi"}) for i in range(events)]
    for i in range(0, events, 100):
        store.insert_events(evs[i:i + 100], times[(i // 100) % 3])
    store.apply_node_updates([Presence(node_id="pos-0", state="online", kelurahan_code="33.74.10.1001", rw=5, rt=3,
                                       display_name="Pos RT 03")], [], NOW)
    store.insert_snapshot(SnapshotEnvelope(snapshot_id="snap-0000000000001", event_id=evs[0].event_id,
                                           node_id="pos-0", taken_at=NOW,
                                           data=base64.b64encode(b"\xff\xd8jpeg").decode()), NOW)
    store.record_rejection(node_id="pos-1", topic="t", reason="bad_json", detail="x", at=NOW)
    store.registry_tables().put({"node_id": "pos-0", "signing_public_key": "PEM", "kelurahan_code": "33.74.10.1001",
                                 "rw": 5, "rt": 3, "display_name": "Pos RT 03", "status": "enrolled",
                                 "cert_serial": "0a", "cert_not_after": NOW + 365 * DAY, "enrolled_at": NOW},
                                revoke_older_certs_at=None)
    UserStore(store.desk()).add("operator1", "operator", "a-long-password-1")
    with store.desk().incident_tx() as tx:
        tx.insert_incident("inc-1", "pos-0", "PANIC", 1, NOW, NOW, "synced")
        tx.link_event("pos-0", evs[0].event_id, "inc-1")
        tx.log_step("inc-1", NOW, "new", "post:pos-0", "PANIC")
    store.desk().log_access(NOW, "operator1", "operator", "view", "incident", "inc-1", "127.0.0.1", True)
    store.desk().set_state("cursor", "42")
    for i in range(3):
        store.audit_tables().append(NOW - i, "cli:root", "user_add", f"u{i}", "{}", None)
    return store


def _counts(url: str, tables: list[str]) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}  # type: ignore[index]


TABLES = ["events", "event_keys", "nodes", "snapshots", "rejections", "node_registry", "node_certs", "web_users",
          "incidents", "incident_events", "incident_log", "access_log", "web_state", "audit_log"]


def test_copy_round_trip_is_verified_and_idempotent(tmp_path: Path, pg_url: str) -> None:
    src = _populate(tmp_path / "central.db")
    src_events = src.list_events(limit=10_000)
    src.close()
    proc = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url, "--chunk", "70")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "events: 300/300 rows, done" in proc.stdout and "ok:" in proc.stdout
    assert "not copied: web_login_attempts" in proc.stdout
    counts = _counts(pg_url, TABLES)
    assert counts == {"events": 300, "event_keys": 300, "nodes": 3, "snapshots": 1, "rejections": 1,
                      "node_registry": 1, "node_certs": 1, "web_users": 1, "incidents": 1, "incident_events": 1,
                      "incident_log": 1, "access_log": 1, "web_state": 1, "audit_log": 3}
    # Run again: nothing is copied twice.
    again = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url)
    assert again.returncode == 0 and "ok: 0 rows copied now" in again.stdout, again.stdout + again.stderr
    assert _counts(pg_url, TABLES) == counts
    pg = open_store(pg_url)
    try:
        copied = pg.list_events(limit=10_000)
        assert [(r["rowid"], r["event_id"], r["payload"], r["received_at"]) for r in copied] == \
            [(r["rowid"], r["event_id"], r["payload"], r["received_at"]) for r in src_events]
        snap = pg.get_snapshot("snap-0000000000001")
        assert snap is not None and snap["data"] == b"\xff\xd8jpeg" and snap["sealed"] is False
        assert pg.desk().user("operator1") is not None
        assert pg.desk().incident_event_ids("inc-1") == [src_events[0]["event_id"]]
        assert pg.desk().get_state("cursor") == "42"
        assert [n["node_id"] for n in pg.list_nodes()] == ["pos-0", "pos-1", "pos-2"]
        # Sequences moved past the copied ids: new rows never collide.
        new, _ = pg.insert_events([event("pos-0", "PANIC")], NOW)
        assert pg.get_event(new[0])["rowid"] > max(r["rowid"] for r in src_events)  # type: ignore[index]
        pg.audit_tables().append(NOW, "cli:root", "x", "y", "{}", None)
        ids = [r["id"] for r in pg.audit_tables().recent(10)]
        assert len(set(ids)) == 4
    finally:
        pg.close()
    # Now the target holds rows the source does not: the verification says so.
    differs = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url)
    assert differs.returncode == 1 and "MISMATCH" in differs.stdout and "Traceback" not in differs.stderr


def test_target_with_other_data_is_refused_unless_merge(tmp_path: Path, pg_url: str) -> None:
    _populate(tmp_path / "a.db", events=30).close()
    _populate(tmp_path / "b.db", events=40).close()
    assert _cli("--from", f"sqlite:///{tmp_path / 'a.db'}", "--to", pg_url).returncode == 0
    refused = _cli("--from", f"sqlite:///{tmp_path / 'b.db'}", "--to", pg_url)
    assert refused.returncode == 2 and "already holds data" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert _counts(pg_url, ["events"]) == {"events": 30}
    merged = _cli("--from", f"sqlite:///{tmp_path / 'b.db'}", "--to", pg_url, "--merge")
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert _counts(pg_url, ["events", "event_keys", "audit_log", "web_users"]) == \
        {"events": 70, "event_keys": 70, "audit_log": 6, "web_users": 1}
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT COUNT(DISTINCT rowid) FROM events").fetchone()
    assert row is not None and row[0] == 70  # merged rows got new row ids


def test_killed_copy_resumes_without_duplicates(tmp_path: Path, pg_url: str) -> None:
    total = 20_000
    _populate(tmp_path / "central.db", events=total).close()
    proc = subprocess.Popen([sys.executable, "-m", "central_sync.cli", "store", "copy", "--from",
                             f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url, "--chunk", "20"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    copied = 0
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with psycopg.connect(pg_url) as conn:
                    row = conn.execute("SELECT copied FROM kentongan_copy_progress WHERE tbl = 'events'").fetchone()
                copied = int(row[0]) if row else 0
            except psycopg.errors.UndefinedTable:
                copied = 0
            if copied > 0:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(60)
    if not 0 < copied < total:
        pytest.skip(f"could not catch the copy mid-way (copied {copied})")
    mid = _counts(pg_url, ["events", "event_keys"])
    assert 0 < mid["events"] < total and mid["events"] == mid["event_keys"]
    resumed = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url, "--chunk", "2000")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming an interrupted copy" in resumed.stdout
    assert _counts(pg_url, ["events", "event_keys"]) == {"events": total, "event_keys": total}
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT COUNT(DISTINCT (node_id, event_id)), COUNT(DISTINCT rowid) FROM events").fetchone()
    assert row == (total, total)


def test_clear_errors(tmp_path: Path, pg_url: str) -> None:
    missing = _cli("--from", f"sqlite:///{tmp_path / 'nope.db'}", "--to", pg_url)
    assert missing.returncode == 2 and "no SQLite store" in missing.stderr
    _populate(tmp_path / "central.db", events=3).close()
    not_pg = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", f"sqlite:///{tmp_path / 'x.db'}")
    assert not_pg.returncode == 2 and "--to" in not_pg.stderr
    port = pg_url.rsplit(":", 1)[1].split("/")[0]
    dead = pg_url.replace(f":{port}/", ":1/")
    unreachable = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", dead, timeout=120)
    assert unreachable.returncode == 2 and unreachable.stderr.startswith("error: ")
    for p in (missing, not_pg, unreachable):
        assert "Traceback" not in p.stderr


def test_source_from_the_config(tmp_path: Path, pg_url: str) -> None:
    _populate(tmp_path / "central.db", events=12).close()
    cfg = tmp_path / "central.toml"
    cfg.write_text('database = "central.db"\n')
    ok = _cli("--config", str(cfg), "--to", pg_url)
    assert ok.returncode == 0 and "events: 12/12 rows, done" in ok.stdout, ok.stdout + ok.stderr
    both = _cli("--config", str(cfg), "--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url)
    assert both.returncode == 2 and "--from" in both.stderr
    on_pg = tmp_path / "pg.toml"
    on_pg.write_text(f'[store]\nurl = "{pg_url}"\n')
    not_sqlite = _cli("--config", str(on_pg), "--to", pg_url)
    assert not_sqlite.returncode == 2 and "not SQLite" in not_sqlite.stderr


def test_rows_postgres_cannot_hold_are_listed_not_fatal(tmp_path: Path, pg_url: str) -> None:
    """An old SQLite file may hold a payload with a NUL character (written before the store's value
    checks): that row is refused alone and named; every other row is copied."""
    _populate(tmp_path / "central.db", events=50).close()
    import sqlite3
    with sqlite3.connect(tmp_path / "central.db") as conn:
        conn.execute("UPDATE events SET payload = ? WHERE rowid = 7", ('{"note": "a\\u0000b"}',))
    proc = _cli("--from", f"sqlite:///{tmp_path / 'central.db'}", "--to", pg_url, "--chunk", "20")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "refused by PostgreSQL: events [7]: UntranslatableCharacter: unsupported Unicode escape" in proc.stdout
    assert "events                       50         49  ok (1 refused)" in proc.stdout
    assert "error: source and target differ (1 rows refused" in proc.stderr
    assert _counts(pg_url, ["events", "event_keys"]) == {"events": 49, "event_keys": 49}
