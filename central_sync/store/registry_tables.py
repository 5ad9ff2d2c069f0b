"""The node registry's tables (``node_registry``, ``node_certs``, ``event_digests``,
``security_events``) behind typed methods, on either backend (``sql.py``).
``central_sync.registry`` holds the rules.

The registry is where a post's identity and place live (issue 10): central's ``nodes`` rows are
joined with ``node_registry`` for kelurahan, RW, RT, name and coordinates (``rows.NODE_SELECT``),
so enrolling, re-enrolling or revoking a post marks its ``nodes`` row changed for the desk's
change feed (``_node_changed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from central_sync.store.base import Row
from central_sync.store.postgres_support import CHANNEL
from central_sync.store.sql import SqlRunner, SqlTx, one

_COLS = ("node_id, signing_public_key, kelurahan_code, rw, rt, display_name, status, cert_serial, cert_not_after, "
         "enrolled_at, revoked_at, lat, lon")
_SECURITY_COLS = "node_id, kind, claimed, registered, count, first_at, last_at"


@dataclass(frozen=True)
class SecurityEventRow:
    """``count`` messages of ``kind`` from ``node_id`` between ``first_at`` and ``last_at``;
    ``claimed`` and ``registered`` are short JSON texts (what the post said, what central holds)."""

    node_id: str
    kind: str
    claimed: str
    registered: str
    count: int
    first_at: float
    last_at: float


class RegistryTables:
    def __init__(self, runner: SqlRunner) -> None:
        self.runner = runner

    def get(self, node_id: str) -> Row | None:
        with self.runner.read() as tx:
            return one(tx, f"SELECT {_COLS} FROM node_registry WHERE node_id = ?", (node_id,))

    def put(self, row: Row, *, revoke_older_certs_at: float | None) -> None:
        """Insert or replace a node's registry row and record its certificate, in one transaction."""
        with self.runner.tx() as tx:
            if revoke_older_certs_at is not None:
                tx.run("UPDATE node_certs SET revoked_at = ? WHERE node_id = ? AND revoked_at IS NULL",
                       (revoke_older_certs_at, row["node_id"]))
            tx.run(f"INSERT INTO node_registry ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?, ?) "
                   "ON CONFLICT (node_id) DO UPDATE SET signing_public_key = excluded.signing_public_key, "
                   "kelurahan_code = excluded.kelurahan_code, rw = excluded.rw, rt = excluded.rt, "
                   "display_name = excluded.display_name, status = excluded.status, "
                   "cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after, "
                   "enrolled_at = excluded.enrolled_at, revoked_at = NULL, lat = excluded.lat, lon = excluded.lon",
                   (row["node_id"], row["signing_public_key"], row["kelurahan_code"], row["rw"], row["rt"],
                    row["display_name"], row["status"], row["cert_serial"], row["cert_not_after"],
                    row["enrolled_at"], row.get("lat"), row.get("lon")))
            tx.run("INSERT INTO node_certs (serial, node_id, not_after, issued_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, NULL)",
                   (row["cert_serial"], row["node_id"], row["cert_not_after"], row["enrolled_at"]))
            self._node_changed(tx, str(row["node_id"]))

    def _node_changed(self, tx: SqlTx, node_id: str) -> None:
        """Mark ``node_id``'s ``nodes`` row changed, so every desk re-reads its registry place
        (the change feed carries ``nodes`` rows). Nothing to do when central has not heard from
        the post yet, or when the registry runs on a database of its own (tools, tests)."""
        if self.runner.dialect.name == "postgres":
            if tx.run("UPDATE nodes SET change_seq = nextval('node_change_seq') WHERE node_id = ?", (node_id,)):
                tx.rows("SELECT pg_notify(?, ?) AS n", (CHANNEL, f"n:{node_id}"))
            return
        if one(tx, "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'change_counter'") is None:
            return
        if one(tx, "SELECT 1 AS x FROM nodes WHERE node_id = ?", (node_id,)) is None:
            return
        tx.run("UPDATE change_counter SET seq = seq + 1 WHERE id = 1")
        tx.run("UPDATE nodes SET change_seq = (SELECT seq FROM change_counter WHERE id = 1) WHERE node_id = ?",
               (node_id,))

    def record_renewal(self, node_id: str, cert_serial: str, cert_not_after: float, now: float) -> None:
        with self.runner.tx() as tx:
            tx.run("UPDATE node_registry SET cert_serial = ?, cert_not_after = ? WHERE node_id = ?",
                   (cert_serial, cert_not_after, node_id))
            tx.run("INSERT INTO node_certs (serial, node_id, not_after, issued_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, NULL)", (cert_serial, node_id, cert_not_after, now))

    def revoke(self, node_id: str, status: str, now: float) -> None:
        with self.runner.tx() as tx:
            tx.run("UPDATE node_registry SET status = ?, revoked_at = ? WHERE node_id = ?", (status, now, node_id))
            tx.run("UPDATE node_certs SET revoked_at = ? WHERE node_id = ? AND revoked_at IS NULL", (now, node_id))
            self._node_changed(tx, node_id)

    def revoked_certs(self, valid_after: float) -> list[tuple[str, float]]:
        """(serial hex, revoked_at) of revoked certificates still valid after ``valid_after``."""
        with self.runner.read() as tx:
            return [(str(r["serial"]), float(r["revoked_at"])) for r in tx.rows(
                "SELECT serial, revoked_at FROM node_certs WHERE revoked_at IS NOT NULL AND not_after > ? "
                "ORDER BY serial", (valid_after,))]

    def listing(self) -> list[Row]:
        with self.runner.read() as tx:
            return tx.rows(f"SELECT {_COLS} FROM node_registry ORDER BY node_id")

    def signing_keys(self, limit: int) -> list[tuple[str, str, str]]:
        """(node_id, signing public key PEM, status) of up to ``limit`` registered nodes, in one
        query (a key cache's warm start)."""
        with self.runner.read() as tx:
            return [(str(r["node_id"]), str(r["signing_public_key"]), str(r["status"])) for r in tx.rows(
                "SELECT node_id, signing_public_key, status FROM node_registry ORDER BY node_id LIMIT ?", (limit,))]

    def statuses(self) -> dict[str, str]:
        with self.runner.read() as tx:
            return {str(r["node_id"]): str(r["status"]) for r in tx.rows(
                "SELECT node_id, status FROM node_registry ORDER BY node_id")}

    def generation(self) -> tuple[object, ...]:
        """A value that changes whenever a node is enrolled, re-enrolled or revoked."""
        with self.runner.read() as tx:
            row = one(tx, "SELECT COUNT(*) AS n, MAX(enrolled_at) AS e, MAX(revoked_at) AS r, "
                      "SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END) AS k FROM node_registry")
        return () if row is None else (row["n"], row["e"], row["r"], row["k"])

    def digest(self, node_id: str, event_id: str) -> bytes | None:
        with self.runner.read() as tx:
            row = one(tx, "SELECT digest FROM event_digests WHERE node_id = ? AND event_id = ?", (node_id, event_id))
        return bytes(row["digest"]) if row else None

    def record_digest(self, node_id: str, event_id: str, digest: bytes, now: float) -> None:
        with self.runner.tx() as tx:
            tx.run("INSERT INTO event_digests (node_id, event_id, digest, seen_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING", (node_id, event_id, digest, now))

    def prune_digests(self, before: float) -> int:
        with self.runner.tx() as tx:
            return tx.run("DELETE FROM event_digests WHERE seen_at < ?", (before,))

    # -- place (issue 10) ------------------------------------------------------------------------
    def places(self, node_ids: Sequence[str]) -> dict[str, Row]:
        """``{node_id: {kelurahan_code, rw, rt, status}}`` of those registered (one query per 500)."""
        ids = sorted(set(node_ids))
        out: dict[str, Row] = {}
        with self.runner.tx() as tx:
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ", ".join("?" * len(chunk))
                for r in tx.rows("SELECT node_id, kelurahan_code, rw, rt, status FROM node_registry "
                                 f"WHERE node_id IN ({marks})", chunk):
                    out[str(r["node_id"])] = r
        return out

    def record_security_events(self, rows: Sequence[SecurityEventRow]) -> None:
        """Add counts to each (node, kind) row in ONE transaction (the latest claim is kept)."""
        if not rows:
            return
        with self.runner.tx() as tx:
            tx.many(f"INSERT INTO security_events ({_SECURITY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (node_id, kind) DO UPDATE SET claimed = excluded.claimed, "
                    "registered = excluded.registered, count = security_events.count + excluded.count, "
                    "first_at = CASE WHEN excluded.first_at < security_events.first_at "
                    "THEN excluded.first_at ELSE security_events.first_at END, "
                    "last_at = CASE WHEN excluded.last_at > security_events.last_at "
                    "THEN excluded.last_at ELSE security_events.last_at END",
                    [(r.node_id, r.kind, r.claimed, r.registered, r.count, r.first_at, r.last_at) for r in rows])

    def security_events(self, limit: int = 500) -> list[Row]:
        """Security events, the most recent first."""
        with self.runner.read() as tx:
            return tx.rows(f"SELECT {_SECURITY_COLS} FROM security_events ORDER BY last_at DESC, node_id LIMIT ?",
                           (limit,))
