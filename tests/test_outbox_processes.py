"""Several processes on one node database: the agent starting while a technician's
``kentongan-edge selftest`` records its result, or while ``kentongan-edge status`` looks at the
outbox (a status poll during the agent's start once made the agent's writer collide on a rowid
and fail every event after it, the PANIC included)."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

from edge.outbox import EventDraft, Outbox
from edge.outbox.readonly import read_counts
from tests.test_simulated_post import post_config

NODE = "pos-uji-01"


def test_a_second_writer_never_wedges_the_first(tmp_path: Path) -> None:
    """Two outboxes on one file (two processes: each counts rowids for itself): every insert
    after the other's still succeeds, in order, none lost."""
    db = tmp_path / "outbox.db"
    agent = Outbox(db, NODE)
    other = Outbox(db, NODE)  # e.g. selftest recording its result while the agent starts
    try:
        first = agent.record(EventDraft("BOOT", 4, {}))
        selftest = other.record(EventDraft("SELFTEST", 4, {"ok": True}))  # counted id 1: taken
        panic = agent.record(EventDraft("PANIC", 1, {"button": "panic"}))  # counted id 2: taken
        later = agent.record(EventDraft("STATUS", 4, {}))
    finally:
        other.close()
        agent.close()
    ids = [e.rowid for e in (first, selftest, panic, later)]
    assert len(set(ids)) == 4
    conn = sqlite3.connect(db)
    try:
        stored = {r[0] for r in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()
    assert {first.event_id, selftest.event_id, panic.event_id, later.event_id} <= stored


def _open_and_record(path: str, start: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue) -> None:
    start.wait(30)
    ob = Outbox(Path(path), NODE)
    try:
        ev = ob.record(EventDraft("SELFTEST", 4, {}))
        out.put(("ok", ev.event_id, ob.open_error))
    except Exception as exc:  # reported to the test, which fails on it
        out.put(("error", f"{type(exc).__name__}: {exc}", None))
    finally:
        ob.close()


def test_processes_opening_a_fresh_database_at_once_all_succeed(tmp_path: Path) -> None:
    """Four processes create the same fresh database at the same moment: the schema is applied
    once (no "table ... already exists", no database_unavailable record) and every event is kept."""
    db = tmp_path / "state" / "outbox.db"
    ctx = multiprocessing.get_context("fork")
    start, out = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_and_record, args=(str(db), start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(120)
    assert [r[0] for r in results] == ["ok"] * 4, results
    assert all(r[2] is None for r in results), results
    conn = sqlite3.connect(db)
    try:
        types = sorted(r[0] for r in conn.execute("SELECT type FROM events"))
    finally:
        conn.close()
    assert types == ["SELFTEST"] * 4  # no STORAGE_DEGRADED: nobody found the database unavailable


def _files(db: Path) -> dict[str, bytes]:
    """The database, its identity file and its write reserve, byte for byte (a read-only
    reader may create an empty -wal and a -shm index: no content)."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))
            if not p.name.endswith(("-open.lock", "-shm", "-wal"))}


def test_offline_status_reads_without_writing(tmp_path: Path) -> None:
    """``kentongan-edge status`` with no agent reads the outbox read-only: the files are byte for
    byte the same afterwards, and a database without a schema yet is shown as empty."""
    cfg = post_config(tmp_path)  # state_dir = tmp_path / "state"
    node = tomllib.loads(cfg.read_text())["node"]["node_id"]
    db = tmp_path / "state" / "outbox.db"
    ob = Outbox(db, node)
    try:
        ob.record(EventDraft("PANIC", 1, {}))
        ob.record(EventDraft("STATUS", 4, {}))
    finally:
        ob.close()
    before = _files(db)
    res = subprocess.run([sys.executable, "-m", "edge.cli", "status", "--config", str(cfg), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    st = json.loads(res.stdout)
    assert st["outbox"]["ready"] == 2 and st["outbox"]["by_type"]["PANIC"]["ready"] == 1
    assert _files(db) == before
    wal = Path(f"{db}-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    assert read_counts(empty)["ready"] == 0
