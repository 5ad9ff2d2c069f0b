"""Outbox lifecycle, ordering, crash safety and non-blocking submit (real SQLite files)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.clock import Clock
from edge.errors import StorageError
from edge.outbox import EventDraft, Outbox, Receipt, StoredEvent

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db", "node-test", clock=Clock(forced_quality="synced"))
    yield ob
    ob.close()


def test_record_claim_ack_release_lifecycle(outbox: Outbox) -> None:
    ev = outbox.record(EventDraft("PANIC", 1, {"button": "b1"}, incident_id="inc-1"))
    assert ev.status == "ready" and ev.seq == 0 and ev.node_id == "node-test"
    assert outbox.get(ev.event_id) == ev
    env = ev.envelope()
    assert env.event_id == ev.event_id and env.payload == {"button": "b1"}
    assert env.incident_id == "inc-1" and env.time_quality == "synced"

    claimed = outbox.claim(10)
    assert [c.event_id for c in claimed] == [ev.event_id]
    assert claimed[0].status == "in_flight" and claimed[0].attempts == 1
    assert outbox.claim(10) == []
    assert outbox.release() == 1
    again = outbox.claim(10)
    assert again[0].attempts == 2
    assert outbox.release([again[0].event_id, "unknown"]) == 1
    outbox.claim(10)
    assert outbox.ack([ev.event_id, "unknown-id"]) == 1
    assert outbox.ack([ev.event_id]) == 0  # idempotent
    assert outbox.get(ev.event_id).status == "acked"  # type: ignore[union-attr]
    c = outbox.counts()
    assert (c["ready"], c["in_flight"], c["acked"]) == (0, 0, 1)
    assert c["by_type"]["PANIC"]["acked"] == 1 and c["oldest_ready_age_s"] is None


def test_ack_of_ready_event_and_counts(outbox: Outbox) -> None:
    a, b = outbox.record_many([EventDraft("TAMPER", 2), EventDraft("PATROLI", 4)])
    assert (a.seq, b.seq) == (0, 1) and b.rowid > a.rowid
    assert outbox.ack([b.event_id]) == 1  # ready -> acked is allowed
    c = outbox.counts()
    assert c["ready"] == 1 and c["acked"] == 1
    assert c["oldest_ready_age_s"] is not None and c["oldest_ready_age_s"] >= 0
    assert [e.event_id for e in outbox.list()] == [b.event_id, a.event_id]
    assert [e.event_id for e in outbox.list(status="ready")] == [a.event_id]


def test_claim_order_priority_then_age_p1_jumps_10000_p4(outbox: Outbox) -> None:
    futs = [outbox.submit(EventDraft("PATROLI", 4, {"i": i})) for i in range(10_000)]
    p3 = outbox.record(EventDraft("LELAYU", 3))
    p1 = outbox.record(EventDraft("PANIC", 1))
    for f in futs:
        f.result(30)
    first = outbox.claim(3)
    assert [e.event_id for e in first[:2]] == [p1.event_id, p3.event_id]
    assert first[2].payload == {"i": 0}
    nxt = outbox.claim(5)
    assert [e.payload["i"] for e in nxt] == [1, 2, 3, 4, 5]


def test_seq_strictly_increasing_and_clock_taken_at_submit(tmp_path: Path) -> None:
    class SlowClock(Clock):
        def __init__(self) -> None:
            super().__init__(forced_quality="unsynced")
            self.t = 1000.0

        def wall(self) -> float:
            self.t += 1
            return self.t

    ob = Outbox(tmp_path / "o.db", "node-test", clock=SlowClock(), boot_id="boot-x")
    try:
        futs = [ob.submit(EventDraft("PATROLI", 4)) for _ in range(50)]
        evs = [f.result(10) for f in futs]
        assert [e.seq for e in evs] == list(range(50))
        assert [e.wall_time for e in evs] == [1001.0 + i for i in range(50)]
        assert all(e.boot_id == "boot-x" and e.time_quality == "unsynced" for e in evs)
        assert len({e.event_id for e in evs}) == 50
        monos = [e.mono_ns for e in evs]
        assert monos == sorted(monos)
    finally:
        ob.close()


def test_in_flight_reset_to_ready_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, "node-test")
    ids = [e.event_id for e in ob.record_many([EventDraft("PANIC", 1), EventDraft("TEST", 4)])]
    assert len(ob.claim(10)) == 2
    ob.close()
    ob2 = Outbox(path, "node-test")
    try:
        assert ob2.counts()["ready"] == 2 and ob2.boot_id != ob.boot_id
        assert sorted(e.event_id for e in ob2.claim(10)) == sorted(ids)
        # seq restarts per boot, rowids keep growing
        ev = ob2.record(EventDraft("BOOT", 4))
        assert ev.seq == 0 and ev.rowid > 2
    finally:
        ob2.close()


def test_requeue_expired(outbox: Outbox) -> None:
    outbox.record(EventDraft("PANIC", 1))
    outbox.claim(1)
    assert outbox.requeue_expired(60) == 0
    time.sleep(0.05)
    assert outbox.requeue_expired(0.01) == 1
    assert outbox.counts()["ready"] == 1


def test_flags_oldest_unacked_prune(outbox: Outbox) -> None:
    ev = outbox.record(EventDraft("PANIC", 1))
    low = outbox.record(EventDraft("KUMPUL", 4))
    assert outbox.flags(ev.event_id) == {}
    outbox.mark(ev.event_id, "sms_sent_at", 123.5)
    outbox.mark(ev.event_id, "sms_to", ["+62811"])
    assert outbox.flags(ev.event_id) == {"sms_sent_at": 123.5, "sms_to": ["+62811"]}
    assert outbox.oldest_unacked(1, 3600) == []
    assert [e.event_id for e in outbox.oldest_unacked(1, 0)] == [ev.event_id]
    assert low.event_id not in [e.event_id for e in outbox.oldest_unacked(2, 0)]
    outbox.ack([ev.event_id])
    assert outbox.oldest_unacked(1, 0) == []
    assert outbox.prune_acked(3600) == 0
    assert outbox.prune_acked(0) == 1
    assert outbox.get(ev.event_id) is None and outbox.flags(ev.event_id) == {}
    assert outbox.get(low.event_id) is not None


def test_listener_called_after_commit(outbox: Outbox) -> None:
    seen: list[tuple[StoredEvent, bool]] = []
    path = outbox.path

    def on_event(ev: StoredEvent) -> None:
        # visible to another connection => already committed
        with sqlite3.connect(path) as c:
            found = c.execute("SELECT 1 FROM events WHERE event_id=?", (ev.event_id,)).fetchone()
        seen.append((ev, found is not None))

    def broken(ev: StoredEvent) -> None:
        raise RuntimeError("listener bug")

    outbox.add_listener(broken)
    outbox.add_listener(on_event)
    ev = outbox.record(EventDraft("PANIC", 1))
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [(ev, True)]
    assert outbox.writer_alive()


def test_submit_does_not_block_while_db_write_locked(outbox: Outbox) -> None:
    blocker = sqlite3.connect(outbox.path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")
    blocker.execute("INSERT INTO event_flags VALUES ('x', 'k', '1')")
    try:
        t0 = time.monotonic()
        futs = [outbox.submit(EventDraft("PANIC", 1, {"i": i})) for i in range(200)]
        elapsed = time.monotonic() - t0
        time.sleep(0.3)
        assert not any(f.done() for f in futs)  # the writer is stuck behind the lock...
        assert elapsed < 0.25  # ...but submit returned at once (generous bound for a busy box)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert [f.result(30).payload["i"] for f in futs] == list(range(200))


def test_close_flushes_pending_and_rejects_later_submits(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ob = Outbox(path, "node-test")
    futs = [ob.submit(EventDraft("PATROLI", 4, {"i": i})) for i in range(3000)]
    ob.close()
    assert all(f.done() and f.exception() is None for f in futs)
    assert not ob.writer_alive()
    late = ob.submit(EventDraft("PANIC", 1))
    with pytest.raises(StorageError):
        late.result(1)
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3000


_CHILD = """
import sys
from pathlib import Path
from edge.outbox import EventDraft, Outbox
ob = Outbox(Path(sys.argv[1]), "node-kill")
i = 0
while True:
    ev = ob.record(EventDraft("PANIC" if i % 7 == 0 else "PATROLI", 1 if i % 7 == 0 else 4,
                              {"i": i}))
    sys.stdout.write(ev.event_id + "\\n")
    sys.stdout.flush()
    i += 1
"""


def test_kill_9_loses_no_recorded_event(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE,
                            env=env, text=True, cwd=ROOT)
    printed: list[str] = []
    assert proc.stdout is not None
    try:
        while len(printed) < 300:
            line = proc.stdout.readline()
            assert line, "child died early"
            printed.append(line.strip())
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    printed += [x for x in rest.splitlines() if len(x) == 36]  # complete ids only
    assert proc.returncode == -signal.SIGKILL
    ob = Outbox(path, "node-kill")
    try:
        assert ob.quarantined is None
        with sqlite3.connect(path) as c:
            stored = [r[0] for r in c.execute("SELECT event_id FROM events")]
            seqs = [r[0] for r in c.execute("SELECT seq FROM events ORDER BY id")]
        assert len(stored) == len(set(stored))
        missing = set(printed) - set(stored)
        assert not missing
        assert seqs == sorted(seqs) and seqs[0] == 0
    finally:
        ob.close()


def test_event_ids_are_uuid7_with_current_time(outbox: Outbox) -> None:
    import uuid6

    evs = outbox.record_many([EventDraft("TEST", 4) for _ in range(200)])
    ids = [uuid6.UUID(e.event_id) for e in evs]
    assert all(u.version == 7 and u.variant == "specified in RFC 4122" for u in ids)
    assert len(set(ids)) == 200
    assert all(abs(u.time / 1000 - time.time()) < 60 for u in ids)


# ------------------------------------------------------------------ receipts (submit's handle)


def test_receipt_resolves_after_commit_and_callbacks_run_on_writer(outbox: Outbox) -> None:
    path = outbox.path
    calls: list[tuple[str, bool, bool]] = []

    def on_done(r: Receipt[StoredEvent]) -> None:
        ev = r.result(0)  # already resolved when the callback runs
        with sqlite3.connect(path) as c:  # visible to another connection => committed
            found = c.execute("SELECT 1 FROM events WHERE event_id=?", (ev.event_id,)).fetchone()
        calls.append((threading.current_thread().name, r.done(), found is not None))

    def broken(r: Receipt[StoredEvent]) -> None:
        raise RuntimeError("callback bug")

    blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # the writer cannot commit until we let it
    try:
        r = outbox.submit(EventDraft("PANIC", 1, {"k": "v"}))
        assert isinstance(r, Receipt) and not hasattr(r, "__dict__")  # __slots__, no lock
        r.add_done_callback(broken)
        r.add_done_callback(on_done)
        time.sleep(0.2)
        assert not r.done() and not r.cancelled() and not r.cancel() and calls == []
        with pytest.raises(TimeoutError):
            r.result(timeout=0.05)
        with pytest.raises(concurrent.futures.TimeoutError):  # same class as TimeoutError
            r.exception(timeout=0.05)
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    ev = r.result(timeout=10)
    assert r.done() and r.exception(timeout=0) is None and ev.payload == {"k": "v"}
    deadline = time.monotonic() + 5  # as with Future, waiters wake before callbacks run
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == [("outbox-writer", True, True)]  # once, after COMMIT, on the writer thread
    assert outbox.writer_alive()  # a raising callback is logged, not fatal

    here: list[tuple[str, StoredEvent]] = []
    r.add_done_callback(lambda x: here.append((threading.current_thread().name,
                                               x.result())))
    assert here == [(threading.current_thread().name, ev)]  # done already: ran immediately


def test_receipt_failure_reaches_caller_and_callbacks(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "node-test")
    ob.close()
    r = ob.submit(EventDraft("PANIC", 1))
    assert r.done()
    err = r.exception(timeout=0)
    assert isinstance(err, StorageError)
    with pytest.raises(StorageError):
        r.result(timeout=0)
    got: list[BaseException | None] = []
    r.add_done_callback(lambda x: got.append(x.exception()))
    assert got == [err]


def test_many_threads_submit_concurrently_distinct_increasing_seq(outbox: Outbox) -> None:
    n_threads, per_thread = 8, 400
    start = threading.Barrier(n_threads)
    receipts: dict[int, list[Receipt[StoredEvent]]] = {}
    results: dict[int, list[StoredEvent]] = {}
    callbacks: list[int] = []
    lock = threading.Lock()

    def producer(t: int) -> None:
        start.wait()
        mine = [outbox.submit(EventDraft("PATROLI", 4, {"t": t, "i": i}))
                for i in range(per_thread)]
        def on_done(x: Receipt[StoredEvent]) -> None:
            with lock:
                callbacks.append(x.result().seq)

        for r in mine[::50]:
            r.add_done_callback(on_done)
        receipts[t] = mine
        results[t] = [r.result(timeout=30) for r in mine]  # many threads wait at once

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(results) == list(range(n_threads))
    evs = [e for t in results for e in results[t]]
    assert len(evs) == n_threads * per_thread
    assert sorted(e.seq for e in evs) == list(range(n_threads * per_thread))  # distinct, no gap
    assert len({e.event_id for e in evs}) == len(evs)
    by_rowid = sorted(evs, key=lambda e: e.rowid)
    assert [e.seq for e in by_rowid] == sorted(e.seq for e in evs)  # seq follows commit order
    for t, mine in results.items():  # each producer's events keep its submit order
        assert [e.payload["i"] for e in mine] == list(range(per_thread))
        seqs = [e.seq for e in mine]
        assert seqs == sorted(seqs)
        assert all(r.done() and r.exception() is None for r in receipts[t])
    deadline = time.monotonic() + 5
    while len(callbacks) < n_threads * per_thread // 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(callbacks) == n_threads * per_thread // 50
    with sqlite3.connect(outbox.path) as c:
        db = c.execute("SELECT seq FROM events ORDER BY id").fetchall()
    assert [s for (s,) in db] == list(range(n_threads * per_thread))
