"""bench/fleet.py's set-up: broker, central config, CA, registered post keys, a dashboard user
(``Setup``), counting queries on central's store (``Database``), a throwaway PostgreSQL."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_sim import node_ids, node_key  # noqa: E402
from central_sync.broker import LocalMosquitto, free_port  # noqa: E402
from central_sync.store import open_store  # noqa: E402
from edge.signing import public_key_pem  # noqa: E402

PY = sys.executable
CLI = [PY, "-m", "central_sync.cli"]


def port_outside_ephemeral_range() -> int:
    """A free loopback port below the kernel's ephemeral range: 10,000 simulated posts take
    10,000 ephemeral ports, and one of them may take a port picked earlier by ``free_port``
    before the web process binds it."""
    import random
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10_000, max(low, 10_001))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class Database:
    """Counting queries on central's store (SQLite file or PostgreSQL URL), and bulk key
    registration (one transaction for the whole fleet)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None

    def query(self, sql: str, rows: list[tuple[Any, ...]] | None = None) -> Any:
        if self.path is not None:
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                with conn:
                    if rows is not None:
                        conn.executemany(sql, rows)
                        return None
                    return conn.execute(sql).fetchone()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as pg:
            if rows is not None:
                with pg.cursor() as cur:
                    cur.executemany(sql.replace("?", "%s"), rows)
                return None
            return pg.execute(sql).fetchone()


def start_postgres(work: Path) -> tuple[Any, str]:
    """A throwaway PostgreSQL cluster (tests/pg_cluster.py: initdb in a temp dir, free loopback
    port) with fsync ON, as a production server would run; returns (cluster, database URL)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import psycopg
    from pg_cluster import PgCluster

    # fsync=True: PgCluster() alone passes "-c fsync=off" on the command line, which ALTER SYSTEM
    # cannot override (the bench ran without fsync until this was found).
    cluster = PgCluster(fsync=True).start()
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET synchronous_commit = on")
        conn.execute("SELECT pg_reload_conf()")
        fsync = conn.execute("SHOW fsync").fetchone()
    if fsync is None or fsync[0] != "on":
        raise RuntimeError(f"the bench's PostgreSQL runs with fsync {fsync}")
    return cluster, cluster.new_database()


class Setup:
    """Broker, central config, CA, registered keys and a dashboard user in a temp dir."""

    def __init__(self, work: Path, posts: int, seed: str, postgres: bool = False, signed: bool = True,
                 rw_posts: int = 7) -> None:
        """``rw_posts``: posts per RW (one per RT), so an incident's RW warning reaches
        ``rw_posts - 1`` other posts; RWs are numbered 1.. in one kelurahan."""
        self.work = work
        self.pg: Any = None
        #: Extra ``[ingest]`` lines of central's config (``bench/fleet.py --ingest-set``).
        self.ingest_extra: list[str] = []
        url = f"sqlite:///{work / 'central.db'}"
        if postgres:
            self.pg, url = start_postgres(work)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        self.broker = LocalMosquitto(work / "mosquitto", extra_conf="set_tcp_nodelay true\n"
                                     "max_queued_messages 1000000\n").start()
        self.web_port = port_outside_ephemeral_range()
        self.db = Database(url)
        self.cfg = work / "central.toml"
        self.url, self.signed = url, signed
        self.configure(0, pki=True)  # "ca init" needs the [pki] section even for an unsigned run
        subprocess.run([*CLI, "ca", "init", "--config", str(self.cfg)], check=True, capture_output=True, cwd=ROOT)
        if not signed:  # the CA is still needed for "user add"; central verifies only with [pki]
            self.configure(0, pki=False)
        self.nodes = node_ids("post", 0, posts)
        open_store(url).close()  # creates (migrates) every table
        now = time.time()
        self.db.query("INSERT INTO node_registry (node_id, signing_public_key, kelurahan_code, rw, rt, display_name, "
                      "status, cert_serial, cert_not_after, enrolled_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      [(n, public_key_pem(node_key(seed, n)), "33.74.10.1001", 1 + i // rw_posts, 1 + i % rw_posts,
                        f"Pos {n}", "enrolled", f"{i:x}", now + 86400 * 365, now)
                       for i, n in enumerate(self.nodes)])
        pw = work / "pw"
        pw.write_text("bench-password-123\n")
        subprocess.run([*CLI, "user", "add", "bench", "--role", "admin", "--password-file", str(pw), "--config",
                        str(self.cfg)], check=True, capture_output=True, cwd=ROOT)

    def configure(self, repeat: int, pki: bool | None = None) -> None:
        """(Re)write central's config; each repeat gets its own shared group, so a stopped
        worker's session (expiring after 5 s) does not collect the next phase's messages, and its
        own client ids, so a repeat starts a session of its own instead of resuming the previous
        repeat's with the previous group in it (which central resets once, a reconfiguration's
        cost, not the steady state this bench measures: docs/scale.md, "Stale subscriptions of a
        resumed session")."""
        with_pki = self.signed if pki is None else pki
        self.cfg.write_text(f'''log_level = "WARNING"
[broker]
port = {self.broker.port}
client_id = "central-r{repeat}"
[ingest]
shared_group = "bench-r{repeat}"
shared_session_expiry_seconds = 5
{"".join(line + chr(10) for line in self.ingest_extra)}[web]
port = {self.web_port}
[store]
url = "{self.url}"
''' + (f'[pki]\ndir = "{self.work / "pki"}"\n' if with_pki else ""))

    def events(self) -> int:
        return int(self.db.query("SELECT COUNT(*) FROM events")[0])

    def duplicated(self) -> int:
        return int(self.db.query("SELECT COUNT(*) - COUNT(DISTINCT event_id) FROM events")[0])

    def close(self) -> None:
        self.broker.stop()
        if self.pg is not None:
            self.pg.close()
