"""The node registry's tables (``node_registry``, ``node_certs``, ``event_digests``) behind typed
methods, on either backend (``sql.py``). ``central_sync.registry`` holds the rules."""

from __future__ import annotations

from central_sync.store.base import Row
from central_sync.store.sql import SqlRunner, one

_COLS = ("node_id, signing_public_key, kelurahan_code, rw, rt, display_name, status, cert_serial, cert_not_after, "
         "enrolled_at, revoked_at")


class RegistryTables:
    def __init__(self, runner: SqlRunner) -> None:
        self.runner = runner

    def get(self, node_id: str) -> Row | None:
        with self.runner.tx() as tx:
            return one(tx, f"SELECT {_COLS} FROM node_registry WHERE node_id = ?", (node_id,))

    def put(self, row: Row, *, revoke_older_certs_at: float | None) -> None:
        """Insert or replace a node's registry row and record its certificate, in one transaction."""
        with self.runner.tx() as tx:
            if revoke_older_certs_at is not None:
                tx.run("UPDATE node_certs SET revoked_at = ? WHERE node_id = ? AND revoked_at IS NULL",
                       (revoke_older_certs_at, row["node_id"]))
            tx.run(f"INSERT INTO node_registry ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL) "
                   "ON CONFLICT (node_id) DO UPDATE SET signing_public_key = excluded.signing_public_key, "
                   "kelurahan_code = excluded.kelurahan_code, rw = excluded.rw, rt = excluded.rt, "
                   "display_name = excluded.display_name, status = excluded.status, "
                   "cert_serial = excluded.cert_serial, cert_not_after = excluded.cert_not_after, "
                   "enrolled_at = excluded.enrolled_at, revoked_at = NULL",
                   (row["node_id"], row["signing_public_key"], row["kelurahan_code"], row["rw"], row["rt"],
                    row["display_name"], row["status"], row["cert_serial"], row["cert_not_after"],
                    row["enrolled_at"]))
            tx.run("INSERT INTO node_certs (serial, node_id, not_after, issued_at, revoked_at) "
                   "VALUES (?, ?, ?, ?, NULL)",
                   (row["cert_serial"], row["node_id"], row["cert_not_after"], row["enrolled_at"]))

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

    def revoked_certs(self, valid_after: float) -> list[tuple[str, float]]:
        """(serial hex, revoked_at) of revoked certificates still valid after ``valid_after``."""
        with self.runner.tx() as tx:
            return [(str(r["serial"]), float(r["revoked_at"])) for r in tx.rows(
                "SELECT serial, revoked_at FROM node_certs WHERE revoked_at IS NOT NULL AND not_after > ? "
                "ORDER BY serial", (valid_after,))]

    def listing(self) -> list[Row]:
        with self.runner.tx() as tx:
            return tx.rows(f"SELECT {_COLS} FROM node_registry ORDER BY node_id")

    def statuses(self) -> dict[str, str]:
        with self.runner.tx() as tx:
            return {str(r["node_id"]): str(r["status"]) for r in tx.rows(
                "SELECT node_id, status FROM node_registry ORDER BY node_id")}

    def generation(self) -> tuple[object, ...]:
        """A value that changes whenever a node is enrolled, re-enrolled or revoked."""
        with self.runner.tx() as tx:
            row = one(tx, "SELECT COUNT(*) AS n, MAX(enrolled_at) AS e, MAX(revoked_at) AS r, "
                      "SUM(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END) AS k FROM node_registry")
        return () if row is None else (row["n"], row["e"], row["r"], row["k"])

    def digest(self, node_id: str, event_id: str) -> bytes | None:
        with self.runner.tx() as tx:
            row = one(tx, "SELECT digest FROM event_digests WHERE node_id = ? AND event_id = ?", (node_id, event_id))
        return bytes(row["digest"]) if row else None

    def record_digest(self, node_id: str, event_id: str, digest: bytes, now: float) -> None:
        with self.runner.tx() as tx:
            tx.run("INSERT INTO event_digests (node_id, event_id, digest, seen_at) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING", (node_id, event_id, digest, now))

    def prune_digests(self, before: float) -> int:
        with self.runner.tx() as tx:
            return tx.run("DELETE FROM event_digests WHERE seen_at < ?", (before,))
