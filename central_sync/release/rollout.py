"""Staged rollout state on central: rings, canaries, post reports, automatic halt.

Kept in its own small SQLite file (``<release root>/rollout.db``), not in central's store.

Rings are nested and chosen by central, deterministically from the node id:
``canary`` (nodes the admin names) < ``1%`` (hash bucket < 100 of 10 000) < ``10%`` (< 1000)
< ``all``. A rollout of VERSION to ring R offers VERSION to every post in R or a smaller ring.

* A ring advances (``rollout VERSION --ring NEXT``) only when every post of the rings already
  targeted that has been seen within ``stale_seconds`` reports ``healthy`` on VERSION.
* When the failed share of the targeted posts exceeds ``max_fail_share`` (default 1 %), the
  rollout halts by itself: no post that does not run VERSION yet is offered it any more.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from central_sync.release import ReleaseError

RINGS = ("canary", "1%", "10%", "all")
BUCKETS = 10_000
RING_LIMIT = {"1%": 100, "10%": 1000, "all": BUCKETS}
HEALTHY = "healthy"
FAILED_STATES = ("failed", "rolled_back")
REPORT_STATES = ("healthy", "failed", "rolled_back", "installing", "downloading", "trial",
                 "refused")

SCHEMA = """
CREATE TABLE IF NOT EXISTS canary (node_id TEXT PRIMARY KEY, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rollout (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    version TEXT NOT NULL,
    ring TEXT NOT NULL,
    max_fail_share REAL NOT NULL,
    started_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'halted')),
    halted_reason TEXT
);
CREATE TABLE IF NOT EXISTS node (
    node_id TEXT PRIMARY KEY,
    running_version TEXT,
    last_seen REAL NOT NULL,
    report_version TEXT,
    report_state TEXT,
    report_reason TEXT,
    reported_at REAL
);
CREATE TABLE IF NOT EXISTS report_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
    at REAL NOT NULL
);
"""


def bucket(node_id: str) -> int:
    return int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big") % BUCKETS


@dataclass(frozen=True)
class Rollout:
    id: int
    version: str
    ring: str
    max_fail_share: float
    started_at: float
    status: str
    halted_reason: str | None


class RolloutStore:
    """Rollout state in one SQLite file; safe to share between the server's threads."""

    def __init__(self, path: Path, *, stale_seconds: float = 86400.0,
                 read_only: bool = False) -> None:
        """``read_only``: open an existing file for reading only (the desk); never creates it,
        its directory or its schema (``sqlite3.OperationalError`` when it is not there)."""
        self.path = path
        self.stale_seconds = stale_seconds
        self._lock = threading.Lock()
        if read_only:
            self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=5, check_same_thread=False,
                                         isolation_level=None)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- rings ----------------------------------------------------------------------------------

    def canaries(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT node_id FROM canary")}

    def set_canary(self, node_id: str, on: bool = True) -> None:
        with self._lock:
            if on:
                self._conn.execute("INSERT OR IGNORE INTO canary VALUES (?, ?)",
                                   (node_id, time.time()))
            else:
                self._conn.execute("DELETE FROM canary WHERE node_id = ?", (node_id,))

    def ring_of(self, node_id: str, canaries: set[str] | None = None) -> str:
        if node_id in (self.canaries() if canaries is None else canaries):
            return "canary"
        b = bucket(node_id)
        for ring in ("1%", "10%", "all"):
            if b < RING_LIMIT[ring]:
                return ring
        return "all"

    @staticmethod
    def in_ring(node_ring: str, ring: str) -> bool:
        return RINGS.index(node_ring) <= RINGS.index(ring)

    # -- rollouts -------------------------------------------------------------------------------

    def _rollouts(self, where: str = "", args: tuple[Any, ...] = ()) -> list[Rollout]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, version, ring, max_fail_share, started_at, status, halted_reason "
                f"FROM rollout {where} ORDER BY id", args).fetchall()
        return [Rollout(*r) for r in rows]

    def latest(self, version: str | None = None) -> Rollout | None:
        rows = self._rollouts("WHERE version = ?", (version,)) if version else self._rollouts()
        return rows[-1] if rows else None

    def all_rollouts(self) -> list[Rollout]:
        return self._rollouts()

    def start(self, version: str, ring: str, *, max_fail_share: float = 0.01,
              force: bool = False) -> Rollout:
        """Offer ``version`` to ``ring``; refuses to skip ahead of unhealthy posts."""
        if ring not in RINGS:
            raise ReleaseError(f"unknown ring {ring!r} (rings: {', '.join(RINGS)})")
        if not 0 <= max_fail_share < 1:
            raise ReleaseError("max fail share must be between 0 and 1")
        prev = self.latest(version)
        if prev is not None and prev.status == "halted" and not force:
            raise ReleaseError(f"rollout of {version} is halted ({prev.halted_reason}); fix and "
                               "publish a new version, or --force")
        if not force:
            targeted = prev.ring if prev is not None else None
            if targeted is None and ring != RINGS[0]:
                raise ReleaseError(f"start {version} at ring {RINGS[0]} first (or --force)")
            if targeted is not None and RINGS.index(ring) > RINGS.index(targeted):
                pending = self.not_healthy(version, targeted)
                if pending:
                    shown = ", ".join(f"{n} ({s})" for n, s in pending[:10])
                    raise ReleaseError(f"ring {targeted} is not healthy on {version} yet: "
                                       f"{len(pending)} post(s): {shown}")
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO rollout (version, ring, max_fail_share, started_at, status) "
                "VALUES (?, ?, ?, ?, 'active')", (version, ring, max_fail_share, time.time()))
            rid = cur.lastrowid
        out = self._rollouts("WHERE id = ?", (rid,))[0]
        self._check_halt(out)
        return self._rollouts("WHERE id = ?", (rid,))[0]

    def _ring_nodes(self, ring: str) -> list[tuple[str, str | None, str | None, str | None]]:
        """(node, report_version, report_state, running_version) of live posts in ``ring``."""
        canaries = self.canaries()
        since = time.time() - self.stale_seconds
        with self._lock:
            rows = self._conn.execute(
                "SELECT node_id, report_version, report_state, running_version FROM node "
                "WHERE last_seen >= ?", (since,)).fetchall()
        return [r for r in rows if self.in_ring(self.ring_of(r[0], canaries), ring)]

    def not_healthy(self, version: str, ring: str) -> list[tuple[str, str]]:
        out = []
        for node, rv, rs, running in self._ring_nodes(ring):
            if not (rv == version and rs == HEALTHY) and running != version:
                out.append((node, f"{rs or 'no report'} on {rv or '-'}"))
        return out

    def failures(self, version: str, ring: str) -> tuple[int, int]:
        nodes = self._ring_nodes(ring)
        failed = sum(1 for _n, rv, rs, _r in nodes if rv == version and rs in FAILED_STATES)
        return failed, len(nodes)

    def _check_halt(self, r: Rollout) -> None:
        if r.status != "active":
            return
        failed, total = self.failures(r.version, r.ring)
        if total and failed / total > r.max_fail_share:
            reason = (f"{failed} of {total} posts in ring {r.ring} failed on {r.version} "
                      f"({100 * failed / total:.1f}% > {100 * r.max_fail_share:g}%)")
            with self._lock:
                self._conn.execute("UPDATE rollout SET status = 'halted', halted_reason = ? "
                                   "WHERE version = ? AND status = 'active'", (reason, r.version))

    # -- posts ----------------------------------------------------------------------------------

    def seen(self, node_id: str, running_version: str | None) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO node (node_id, running_version, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET last_seen = excluded.last_seen, "
                "running_version = COALESCE(excluded.running_version, node.running_version)",
                (node_id, running_version, time.time()))

    def report(self, node_id: str, version: str, state: str, reason: str = "") -> Rollout | None:
        """Record a post's update state; halts the rollout of ``version`` when too many fail."""
        if state not in REPORT_STATES:
            raise ReleaseError(f"unknown report state {state!r}")
        now = time.time()
        with self._lock:
            self._conn.execute(
                "INSERT INTO node (node_id, last_seen, report_version, report_state, "
                "report_reason, reported_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(node_id) DO UPDATE SET last_seen = excluded.last_seen, "
                "report_version = excluded.report_version, report_state = excluded.report_state,"
                " report_reason = excluded.report_reason, reported_at = excluded.reported_at",
                (node_id, now, version, state, reason[:500], now))
            if state == HEALTHY:
                self._conn.execute("UPDATE node SET running_version = ? WHERE node_id = ?",
                                   (version, node_id))
            self._conn.execute("INSERT INTO report_log (node_id, version, state, reason, at) "
                               "VALUES (?, ?, ?, ?, ?)", (node_id, version, state, reason[:500],
                                                          now))
        r = self.latest(version)
        if r is not None:
            self._check_halt(r)
        return self.latest(version)

    def target_for(self, node_id: str, running: str | None) -> str | None:
        """The version this post should run: the newest active rollout whose ring includes it.

        A halted rollout is offered to nobody new; a post already on it is told to stay."""
        ring = self.ring_of(node_id)
        best: str | None = None
        for r in self._rollouts():
            if not self.in_ring(ring, r.ring):
                continue
            if r.status == "halted":
                if running == r.version:
                    best = r.version
                continue
            best = r.version
        return best

    def nodes(self) -> list[dict[str, Any]]:
        canaries = self.canaries()
        with self._lock:
            cur = self._conn.execute("SELECT * FROM node ORDER BY node_id")
            cols = [c[0] for c in cur.description]
            rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
        for r in rows:
            r["ring"] = self.ring_of(r["node_id"], canaries)
        return rows
