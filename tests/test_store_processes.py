"""The store across processes: migrations when several central commands start at once on a fresh
database, the change feed between two store objects, and PostgreSQL restarting under load."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from pg_cluster import PgCluster

from central_sync.store import Store, TransientStoreError, is_transient, open_store
from central_sync.store.postgres import PostgresStore
from central_sync.web.post_table import PostTable
from central_sync.web.testing import register
from edge.sync.wire import EventEnvelope, Heartbeat, Presence


def ev(node: str, seq: int, **kw: object) -> EventEnvelope:
    data: dict[str, object] = dict(event_id=str(uuid.uuid4()), node_id=node, boot_id="b", seq=seq, mono_ns=seq,
                                   wall_time=1_700_000_000.0 + seq, time_quality="synced", type="PANIC", priority=1,
                                   payload={"n": seq})
    data.update(kw)
    return EventEnvelope.model_validate(data)


# Each process imports everything first and waits for the go file, so that the four commands
# really open the fresh database at the same moment (imports alone stagger them by a second).
_STARTER = """
import os, pathlib, sys, time
from central_sync import cli
go = pathlib.Path(sys.argv[1])
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.002)
sys.exit(cli.main(sys.argv[2:]))
"""


def test_four_central_commands_started_at_once_on_a_fresh_database(store_url: str, tmp_path: Path) -> None:
    cfg = tmp_path / "central.toml"
    cfg.write_text(f'[store]\nurl = "{store_url}"\n')
    go = tmp_path / "go"
    commands = [["nodes"], ["events"], ["nodes", "--json"], ["events", "--json", "--limit", "5"]]
    procs = [subprocess.Popen([sys.executable, "-c", _STARTER, str(go), *c, "--config", str(cfg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.02)
    go.touch()
    outcomes = [(p.wait(timeout=120), p.stderr.read() if p.stderr else "") for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream is not None:
                stream.close()
    assert [rc for rc, _ in outcomes] == [0, 0, 0, 0], outcomes
    store = open_store(store_url)  # and the schema is complete and usable
    try:
        assert store.commit_events([ev("node-a", 1)], 1.0).inserted
        assert store.desk().get_state("x", "unset") == "unset"
        assert store.registry_tables().statuses() == {}
    finally:
        store.close()


def test_change_feed_reports_other_processes_commits(store_url: str) -> None:
    reader, writer = open_store(store_url), open_store(store_url)  # two processes' worth of connections
    feed = reader.change_feed()
    try:
        mark = feed.head()
        assert feed.wait(mark, 0.2).events == []  # nothing yet: a timeout, not an error
        register(writer, "pos-a", "33.74.01.1001/5/3")  # the place the feed's rows carry (registry)
        writer.apply_node_updates([Presence(node_id="pos-a", state="online", kelurahan_code="33.74.01.1001", rw=5,
                                            rt=3)], [], time.time())
        batch = [ev("pos-a", i) for i in range(3)]
        writer.commit_events(batch, time.time())
        seen_events: list[str] = []
        seen_nodes: set[str] = set()
        deadline = time.monotonic() + 30
        while (len(seen_events) < 3 or "pos-a" not in seen_nodes) and time.monotonic() < deadline:
            changes = feed.wait(mark, 1.0)
            mark = changes.mark
            seen_events += [e["event_id"] for e in changes.events]
            seen_nodes |= {n["node_id"] for n in changes.nodes}
        assert seen_events == [e.event_id for e in batch]
        assert "pos-a" in seen_nodes
        writer.apply_node_updates([], [Heartbeat(node_id="pos-a", boot_id="b", at=time.time(), version="2.0",
                                                 time_quality="synced", outbox={"ready": 4})], time.time())
        deadline = time.monotonic() + 30
        row = None
        while row is None and time.monotonic() < deadline:
            changes = feed.wait(mark, 1.0)
            mark = changes.mark
            row = next((n for n in changes.nodes if n["node_id"] == "pos-a" and n["backlog"] == 4), None)
        assert row is not None and row["version"] == "2.0" and row["rw"] == 5
    finally:
        feed.close()
        reader.close()
        writer.close()


def test_post_table_finds_an_rws_posts_by_index() -> None:
    table = PostTable()
    now = time.time()
    table.load([{"node_id": "a", "kelurahan_code": "33.74.01.1001", "rw": 5, "online": True, "last_seen": now},
                {"node_id": "b", "kelurahan_code": "33.74.01.1001", "rw": 5, "online": True, "last_seen": now - 900},
                {"node_id": "c", "kelurahan_code": "33.74.01.1001", "rw": 6, "online": False, "last_seen": now},
                {"node_id": "d", "kelurahan_code": None, "rw": None, "online": True, "last_seen": None}])
    assert [r["node_id"] for r in table.in_rw("33.74.01.1001", 5)] == ["a", "b"]
    assert {r["node_id"]: r["status"] for r in table.in_rw("33.74.01.1001", 5)} == {"a": "online", "b": "stale"}
    table.update([{"node_id": "b", "kelurahan_code": "33.74.01.1001", "rw": 6, "online": True, "last_seen": now}])
    assert [r["node_id"] for r in table.in_rw("33.74.01.1001", 5)] == ["a"]
    assert [r["node_id"] for r in table.in_rw("33.74.01.1001", 6)] == ["b", "c"]
    assert table.get("d") is not None and table.get("d")["status"] == "unknown"  # type: ignore[index]
    assert len(table) == 4 and set(table.all()) == {"a", "b", "c", "d"}


def test_postgres_restart_mid_load_loses_nothing(pg_cluster: PgCluster, pg_url: str) -> None:
    """Writers retry transient errors (as ingest does) while the server restarts: every event is
    committed exactly once. While the server is down a call raises a transient error."""
    store = PostgresStore(pg_url, timeout_s=3)
    sent: list[EventEnvelope] = []
    transient: list[str] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer() -> None:
        seq = 0
        while not stop.is_set() or seq < 40:
            batch = [ev(f"pos-{seq % 3}", seq * 10 + i) for i in range(10)]
            while True:
                try:
                    result = store.commit_events(batch, time.time())
                    break
                except Exception as exc:  # the retry loop of ingest
                    if not is_transient(exc):
                        failures.append(exc)
                        return
                    transient.append(type(exc).__name__)
                    time.sleep(0.2)
            if len(result.inserted) + len(result.duplicates) != len(batch) or result.rejected:
                failures.append(AssertionError(f"unexpected outcome {result}"))
                return
            sent.extend(batch)
            seq += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        deadline = time.monotonic() + 30
        while len(sent) < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        pg_cluster.executor.stop()
        with pytest.raises(TransientStoreError):
            store.list_nodes()
        time.sleep(1.0)
        pg_cluster.start()
    finally:
        stop.set()
        t.join(120)
    try:
        assert not failures, failures
        assert not t.is_alive()
        assert transient, "the writer never saw the server go away"
        ids = {e.event_id for e in sent}
        assert store.count_events() == len(ids) == len(sent)
        got = {r["event_id"] for r in store.list_events(limit=100_000)}
        assert got == ids
    finally:
        store.close()


def test_store_urls_open_the_right_backend(tmp_path: Path, pg_url: str) -> None:
    lite: Store = open_store(f"sqlite:///{tmp_path / 'x.db'}")
    pg: Store = open_store(pg_url)
    try:
        assert type(lite).__name__ == "CentralStore" and isinstance(pg, PostgresStore)
    finally:
        lite.close()
        pg.close()
    with pytest.raises(Exception, match="unknown store URL scheme"):
        open_store("mysql://x/y")


def test_post_table_view_looks_up_without_copying_the_table() -> None:
    table = PostTable()
    table.load([{"node_id": f"pos-{i:05d}", "kelurahan_code": "33.74.01.1001", "rw": i % 50, "online": True,
                 "last_seen": time.time()} for i in range(10_000)])
    view = table.view()
    assert view.get("pos-00042", {}).get("rw") == 42 and view.get("nope") is None
    assert len(view) == 10_000 and "pos-09999" in view
    assert sum(1 for _ in view.items()) == 10_000
