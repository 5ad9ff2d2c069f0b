"""Benchmark: durable capture rate of the outbox against raw sqlite3 with the same settings.

    .venv/bin/python bench/outbox.py [--events 20000] [--repeats 5] [--single 1000] [--dir D]

Every variant writes to a fresh database with the project's schema, WAL and synchronous=FULL.

* ``outbox submit``   Outbox.submit() of N drafts from one producer thread, then wait for every
                      receipt (group commit by the writer thread, <= BATCH_MAX per transaction).
* ``raw + row build`` one thread builds the same rows (clock readings, UUIDv7, JSON payload) and
                      executemany()s them in transactions of BATCH_MAX: the same work minus the
                      outbox machinery (queue, receipts, writer thread). This is the 0.8x target.
* ``outbox writer only`` the same, but the queue is filled before the writer may start, so the
                      producer's cost (receipts, clock readings, GIL hand-offs) is left out.
* ``raw insert only`` executemany() of pre-built rows, same batches: the floor SQLite allows.
* one-per-commit lines: Outbox.record() in a loop vs one-row raw transactions.

After every outbox run (outside the timed part) the bench checks that the outbox's connection
really is WAL + synchronous=FULL and that all N rows are in the file, read by a new connection.
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.clock import Clock
from edge.outbox import (
    _INSERT,
    BATCH_MAX,
    EventDraft,
    Outbox,
    OutboxDB,
    StorageQuota,
    new_event_ids,
)

QUOTA = StorageQuota(disk_quota_bytes=1 << 40, snapshot_quota_bytes=1 << 40, min_free_bytes=0)
PAYLOAD: dict[str, Any] = {"button": "b1", "trigger": "hold", "note": "x" * 200}


def _drafts(n: int) -> list[EventDraft]:
    return [EventDraft("PATROLI", 4, dict(PAYLOAD, i=i)) for i in range(n)]


def _fresh(workdir: Path) -> Path:
    d = Path(tempfile.mkdtemp(dir=workdir))
    return d / "outbox.db"


def _raw_conn(path: Path) -> sqlite3.Connection:
    db = OutboxDB(path)  # same schema, WAL, synchronous=FULL
    db.open("node-bench")
    conn = db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    return conn


def _build_rows(drafts: list[EventDraft], clock: Clock) -> list[tuple[Any, ...]]:
    rows = []
    ids = new_event_ids(len(drafts))  # the outbox's own id generator: same rows, same cost
    for i, d in enumerate(drafts):
        wall, quality = clock.now()
        rows.append((i + 1, ids[i], "node-bench", "boot", i, clock.mono_ns(), wall, quality,
                     d.type, d.priority, d.incident_id, json.dumps(d.payload)))
    return rows


def _batched_insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    for start in range(0, len(rows), BATCH_MAX):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_INSERT, rows[start:start + BATCH_MAX])
        conn.execute("COMMIT")


def _check_durable(ob: Outbox, n: int) -> None:
    """Same sync policy as the raw baseline, and every event is really in the file."""
    assert ob.db.query("PRAGMA journal_mode")[0][0] == "wal"
    assert ob.db.query("PRAGMA synchronous")[0][0] == 2  # FULL
    with sqlite3.connect(ob.path) as c:
        got = c.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert got >= n, f"only {got} of {n} events in the file"


def bench_outbox(workdir: Path, n: int) -> float:
    drafts = _drafts(n)
    ob = Outbox(_fresh(workdir), "node-bench", quota=QUOTA)
    try:
        t0 = time.perf_counter()
        receipts = [ob.submit(d) for d in drafts]
        for r in receipts:
            r.result(120)
        rate = n / (time.perf_counter() - t0)
        _check_durable(ob, n)
        return rate
    finally:
        ob.close()


def bench_outbox_writer(workdir: Path, n: int) -> float:
    """Writer side only: the queue is filled while the writer is held off, then timed."""
    drafts = _drafts(n)
    ob = Outbox(_fresh(workdir), "node-bench", quota=QUOTA)
    try:
        with ob.db.lock:
            receipts = [ob.submit(d) for d in drafts]
            t0 = time.perf_counter()
        for r in receipts:
            r.result(120)
        rate = n / (time.perf_counter() - t0)
        _check_durable(ob, n)
        return rate
    finally:
        ob.close()


def bench_raw_build(workdir: Path, n: int) -> float:
    drafts = _drafts(n)
    conn = _raw_conn(_fresh(workdir))
    clock = Clock()
    try:
        t0 = time.perf_counter()
        _batched_insert(conn, _build_rows(drafts, clock))
        return n / (time.perf_counter() - t0)
    finally:
        conn.close()


def bench_raw_insert(workdir: Path, n: int) -> float:
    rows = _build_rows(_drafts(n), Clock())
    conn = _raw_conn(_fresh(workdir))
    try:
        t0 = time.perf_counter()
        _batched_insert(conn, rows)
        return n / (time.perf_counter() - t0)
    finally:
        conn.close()


def bench_outbox_single(workdir: Path, n: int) -> float:
    drafts = _drafts(n)
    ob = Outbox(_fresh(workdir), "node-bench", quota=QUOTA)
    try:
        t0 = time.perf_counter()
        for d in drafts:
            ob.record(d)
        return n / (time.perf_counter() - t0)
    finally:
        ob.close()


def bench_raw_single(workdir: Path, n: int) -> float:
    drafts = _drafts(n)
    conn = _raw_conn(_fresh(workdir))
    clock = Clock()
    try:
        t0 = time.perf_counter()
        for row in _build_rows(drafts, clock):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_INSERT, row)
            conn.execute("COMMIT")
        return n / (time.perf_counter() - t0)
    finally:
        conn.close()


def _run(fn: Callable[[Path, int], float], workdir: Path, n: int) -> float:
    gc.collect()  # every variant starts from a collected heap (no GC debt from the previous one)
    return fn(workdir, n)


def _median(fn: Callable[[Path, int], float], workdir: Path, n: int, repeats: int) -> float:
    return statistics.median(_run(fn, workdir, n) for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--single", type=int, default=1_000, help="events for one-per-commit lines")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the databases "
                    "(default: a temp dir; use the node's real filesystem for real numbers)")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kentongan-bench-", dir=args.dir))
    try:
        # interleave variants per repeat so drift on a shared box hits all of them alike
        grouped: dict[str, list[float]] = {"outbox": [], "writer": [], "raw_build": [],
                                           "raw_insert": []}
        for _ in range(args.repeats):
            grouped["outbox"].append(_run(bench_outbox, workdir, args.events))
            grouped["writer"].append(_run(bench_outbox_writer, workdir, args.events))
            grouped["raw_build"].append(_run(bench_raw_build, workdir, args.events))
            grouped["raw_insert"].append(_run(bench_raw_insert, workdir, args.events))
        ob, wr, rb, ri = (statistics.median(grouped[k])
                          for k in ("outbox", "writer", "raw_build", "raw_insert"))
        reps = max(1, args.repeats // 2)
        s_ob = _median(bench_outbox_single, workdir, args.single, reps)
        s_raw = _median(bench_raw_single, workdir, args.single, reps)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"SQLite {sqlite3.sqlite_version}, WAL + synchronous=FULL, batch <= {BATCH_MAX}, "
          f"{args.events} events x {args.repeats} runs (median)")
    print(f"{'variant':<34}{'events/s':>12}{'outbox/variant':>16}")
    print(f"{'outbox submit (group commit)':<34}{ob:>12,.0f}{'':>16}")
    print(f"{'outbox writer only (prefilled)':<34}{wr:>12,.0f}{'':>16}")
    print(f"{'raw executemany + row build':<34}{rb:>12,.0f}{ob / rb:>15.2f}x")
    print(f"{'  (writer only / raw + row build)':<34}{'':>12}{wr / rb:>15.2f}x")
    print(f"{'raw executemany, rows prebuilt':<34}{ri:>12,.0f}{ob / ri:>15.2f}x")
    print(f"{'outbox record() one per commit':<34}{s_ob:>12,.0f}{'':>16}")
    print(f"{'raw one-row transactions':<34}{s_raw:>12,.0f}{s_ob / s_raw:>15.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
