"""Post supervision's tables (``central_links``, ``post_outages``, ``post_first_seen``) and the
escalation claim on the incident log, on either backend (``sql.py``).

Idempotence across processes: every statement that opens something (an outage with its
POST_OFFLINE incident, an escalation) runs inside ``DeskTables.incident_tx`` (serialised against
every other incident transaction, SQLite ``BEGIN IMMEDIATE`` / PostgreSQL advisory lock) and is
keyed so a second sweeper finds it done: an outage by (post, outage start), an escalation by the
``escalated`` step in the incident's log.
"""

from __future__ import annotations

from dataclasses import dataclass

from central_sync.store.base import Row
from central_sync.store.desk_tables import OPEN, DeskTables, IncidentTx
from central_sync.store.sql import SqlRunner, one

POST_OFFLINE = "POST_OFFLINE"
ESCALATED_STEP = "escalated"
#: Timeline steps that record an escalation's outcome (one per notifier).
ESCALATION_OUTCOMES = ("escalation_delivered", "escalation_failed")
# Rows of ``incident_log`` that hold incident ``i``'s escalation: an outcome, or a claim still in
# its lease (parameters: ``_held_params``).
_HELD_BY = ("SELECT 1 FROM incident_log l WHERE l.incident_id = i.incident_id AND (l.step IN (?, ?) "
            "OR (l.step = ? AND l.at >= ?))")
_CLAIMS = f"SELECT COUNT(*) FROM incident_log c WHERE c.incident_id = i.incident_id AND c.step = '{ESCALATED_STEP}'"


def _held_params(lease_cut: float) -> tuple[object, ...]:
    return (*ESCALATION_OUTCOMES, ESCALATED_STEP, lease_cut)


@dataclass(frozen=True)
class LinkRow:
    process_id: str
    connected_since: float
    beat_at: float
    last_message_at: float | None


@dataclass(frozen=True)
class Outage:
    node_id: str
    started_at: float
    detected_at: float
    restored_at: float | None
    incident_id: str | None


def _outage(r: Row) -> Outage:
    return Outage(str(r["node_id"]), float(r["started_at"]), float(r["detected_at"]),
                  None if r["restored_at"] is None else float(r["restored_at"]),
                  None if r["incident_id"] is None else str(r["incident_id"]))


class SupervisionTables:
    """Typed access to the supervision tables of one store (``SupervisionTables.of(store.desk())``)."""

    def __init__(self, desk: DeskTables) -> None:
        self.desk = desk
        self.runner: SqlRunner = desk.runner

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[Row]:
        """A read: no write lock on SQLite (``SqlRunner.read``)."""
        with self.runner.read() as tx:
            return tx.rows(sql, params)

    # -- central's own link (written by ingest processes) -----------------------------------
    def link_beat(self, process_id: str, connected_since: float, at: float,
                  last_message_at: float | None) -> None:
        with self.runner.tx() as tx:
            tx.run("INSERT INTO central_links(process_id, connected_since, beat_at, last_message_at) "
                   "VALUES (?, ?, ?, ?) ON CONFLICT(process_id) DO UPDATE SET "
                   "connected_since = excluded.connected_since, beat_at = excluded.beat_at, "
                   "last_message_at = excluded.last_message_at",
                   (process_id, connected_since, at, last_message_at))

    def link_down(self, process_id: str) -> None:
        with self.runner.tx() as tx:
            tx.run("DELETE FROM central_links WHERE process_id = ?", (process_id,))

    def links(self) -> list[LinkRow]:
        return [LinkRow(str(r["process_id"]), float(r["connected_since"]), float(r["beat_at"]),
                        None if r["last_message_at"] is None else float(r["last_message_at"]))
                for r in self._rows("SELECT * FROM central_links ORDER BY process_id")]

    # -- posts --------------------------------------------------------------------------------
    def unheard_posts(self, heard_before: float) -> list[Row]:
        """``node_id``, ``online``, ``last_seen``, ``presence_at`` of posts not heard since ``heard_before`` or
        whose last presence said offline (their will, or a clean shutdown)."""
        return self._rows("SELECT node_id, online, last_seen, presence_at FROM nodes WHERE last_seen IS NOT NULL "
                          "AND (last_seen < ? OR (online = ? AND presence_at IS NOT NULL))", (heard_before, False))

    def open_outages(self) -> list[Outage]:
        return [_outage(r) for r in self._rows(
            "SELECT * FROM post_outages WHERE restored_at IS NULL ORDER BY started_at")]

    def open_outage_nodes(self) -> list[Row]:
        """``node_id``, ``online``, ``last_seen``, ``presence_at`` of posts with an open outage."""
        return self._rows("SELECT n.node_id, n.online, n.last_seen, n.presence_at FROM nodes n "
                          "JOIN post_outages o ON o.node_id = n.node_id WHERE o.restored_at IS NULL")

    def outages_since(self, node_id: str, since: float) -> list[Outage]:
        """Outages of one post that were still going at ``since`` or began after it."""
        return [_outage(r) for r in self._rows(
            "SELECT * FROM post_outages WHERE node_id = ? AND (restored_at IS NULL OR restored_at > ?) "
            "ORDER BY started_at", (node_id, since))]

    def note_first_seen(self, seen: list[tuple[str, float]]) -> None:
        if not seen:
            return
        with self.runner.tx() as tx:
            tx.many("INSERT INTO post_first_seen(node_id, first_seen) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    seen)

    def first_seen(self, node_id: str) -> float | None:
        rows = self._rows("SELECT first_seen FROM post_first_seen WHERE node_id = ?", (node_id,))
        return float(rows[0]["first_seen"]) if rows else None

    def transmission_times(self, node_id: str, since: float, limit: int = 20_000) -> list[float]:
        """Seconds from the post recording an event to central storing it, for the post's events
        stored since ``since`` whose post clock was synchronised (newest ``limit``)."""
        return [float(r["dt"]) for r in self._rows(
            "SELECT received_at - wall_time AS dt FROM events WHERE node_id = ? AND received_at >= ? "
            "AND time_quality <> 'unsynced' AND wall_time > 0 ORDER BY received_at DESC LIMIT ?",
            (node_id, since, limit))]

    # -- inside an incident transaction ------------------------------------------------------
    @staticmethod
    def node_state(tx: IncidentTx, node_id: str) -> Row | None:
        return one(tx.sql, "SELECT online, last_seen, presence_at FROM nodes WHERE node_id = ?", (node_id,))

    @staticmethod
    def has_outage(tx: IncidentTx, node_id: str, started_at: float) -> bool:
        return one(tx.sql, "SELECT 1 AS x FROM post_outages WHERE node_id = ? AND started_at = ?",
                   (node_id, started_at)) is not None

    @staticmethod
    def open_outage_of(tx: IncidentTx, node_id: str) -> Outage | None:
        row = one(tx.sql, "SELECT * FROM post_outages WHERE node_id = ? AND restored_at IS NULL "
                  "ORDER BY started_at DESC LIMIT 1", (node_id,))
        return _outage(row) if row else None

    @staticmethod
    def insert_outage(tx: IncidentTx, node_id: str, started_at: float, detected_at: float,
                      incident_id: str | None) -> None:
        tx.sql.run("INSERT INTO post_outages(node_id, started_at, detected_at, incident_id) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING", (node_id, started_at, detected_at, incident_id))

    @staticmethod
    def restore_outage(tx: IncidentTx, node_id: str, started_at: float, restored_at: float) -> None:
        tx.sql.run("UPDATE post_outages SET restored_at = ? WHERE node_id = ? AND started_at = ? "
                   "AND restored_at IS NULL", (restored_at, node_id, started_at))

    # -- escalation ---------------------------------------------------------------------------
    def escalation_due(self, opened_before: float, opened_after: float, lease_cut: float, max_claims: int,
                       limit: int = 100) -> list[str]:
        """Open, unacknowledged P1 incidents opened between ``opened_after`` and
        ``opened_before`` whose escalation is not held (``escalation_held``): never claimed, or
        claimed before ``lease_cut`` with no outcome since (the claimer died before sending), at
        most ``max_claims`` times."""
        return [str(r["incident_id"]) for r in self._rows(
            f"SELECT incident_id FROM incidents i WHERE state = 'new' AND state IN {OPEN} AND priority = 1 "
            f"AND opened_at < ? AND opened_at >= ? AND NOT EXISTS ({_HELD_BY}) "
            f"AND ({_CLAIMS}) < ? ORDER BY opened_at LIMIT ?",
            (opened_before, opened_after, *_held_params(lease_cut), max_claims, limit))]

    @staticmethod
    def escalation_held(tx: IncidentTx, incident_id: str, lease_cut: float, max_claims: int) -> bool:
        """True when the incident's escalation must not be claimed (again): it has an outcome
        (delivered or failed), a claim newer than ``lease_cut`` (its claimer is still sending), or
        ``max_claims`` claims already."""
        held = one(tx.sql, f"SELECT 1 AS x FROM incidents i WHERE i.incident_id = ? AND (EXISTS ({_HELD_BY}) "
                   f"OR ({_CLAIMS}) >= ?)", (incident_id, *_held_params(lease_cut), max_claims))
        return held is not None

    @staticmethod
    def escalation_claims(tx: IncidentTx, incident_id: str) -> int:
        row = one(tx.sql, f"SELECT COUNT(*) AS n FROM incident_log WHERE incident_id = ? AND step = '{ESCALATED_STEP}'",
                  (incident_id,))
        return int(row["n"]) if row else 0
