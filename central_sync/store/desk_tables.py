"""The command-centre desk's tables (incidents, users, sessions, login attempts, access log,
warnings, retention log, desk state) behind typed methods, on either backend (``sql.py``).

``DeskTables`` is what ``central_sync.incidents``, ``users``, ``retention`` and the web layer
use; they never write SQL. ``IncidentTx`` is one transaction of incident grouping or of a
lifecycle step, so the grouping rules stay in ``central_sync.incidents``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from central_sync.store.base import Row
from central_sync.store.sql import SqlRunner, SqlTx, one

OPEN = "('new', 'acknowledged')"
#: pg_advisory_xact_lock key serialising incident transactions across processes (PostgreSQL runs
#: READ COMMITTED: two desks grouping the same event at once must not both open an incident).
INCIDENT_LOCK = 0x6B656E746F6E68


class IncidentTx:
    """Incident statements inside one transaction.

    Every change to an incident also gives it the next ``change_seq`` (the highest in the table
    plus one). Incident transactions are serialised across processes (``incident_tx``), so these
    numbers grow in commit order: a reader that remembers the highest it has seen misses nothing.
    They are the ids of the desk's live stream (``DeskTables.incident_changes``).
    """

    def __init__(self, tx: SqlTx, order: str) -> None:
        self._tx = tx
        self._order = order

    @property
    def sql(self) -> SqlTx:
        """The transaction itself, for statements of other table groups that must commit with
        an incident change (``supervision_tables``)."""
        return self._tx

    def mark_changed(self, incident_id: str) -> None:
        """Give the incident the next change number (its page and the live stream update)."""
        self._changed(incident_id)

    def is_grouped(self, node_id: str, event_id: str) -> bool:
        return one(self._tx, "SELECT 1 AS x FROM incident_events WHERE node_id = ? AND event_id = ?",
                   (node_id, event_id)) is not None

    def open_incident_near(self, node_id: str, kind: str, since: float) -> str | None:
        row = one(self._tx, f"SELECT incident_id FROM incidents WHERE node_id = ? AND type = ? AND state IN {OPEN} "
                  "AND last_event_at >= ? ORDER BY last_event_at DESC LIMIT 1", (node_id, kind, since))
        return str(row["incident_id"]) if row else None

    def _changed(self, incident_id: str) -> None:
        self._tx.run("UPDATE incidents SET change_seq = (SELECT COALESCE(MAX(change_seq), 0) + 1 FROM incidents) "
                     "WHERE incident_id = ?", (incident_id,))

    def extend_incident(self, incident_id: str, at: float, priority: int, now: float, quality: str | None) -> None:
        self._tx.run("UPDATE incidents SET last_event_at = CASE WHEN last_event_at > ? THEN last_event_at ELSE ? END, "
                     "priority = CASE WHEN priority < ? THEN priority ELSE ? END, updated_at = ?, time_quality = ?, "
                     "event_count = event_count + 1 WHERE incident_id = ?",
                     (at, at, priority, priority, now, quality, incident_id))
        self._changed(incident_id)

    def exists(self, incident_id: str) -> bool:
        return one(self._tx, "SELECT 1 AS x FROM incidents WHERE incident_id = ?", (incident_id,)) is not None

    def insert_incident(self, incident_id: str, node_id: str, kind: str, priority: int, at: float, now: float,
                        quality: str | None) -> None:
        self._tx.run("INSERT INTO incidents(incident_id, node_id, type, priority, state, opened_at, last_event_at, "
                     "updated_at, time_quality, event_count) VALUES (?, ?, ?, ?, 'new', ?, ?, ?, ?, 1)",
                     (incident_id, node_id, kind, priority, at, at, now, quality))
        self._changed(incident_id)

    def log_step(self, incident_id: str, at: float, step: str, actor: str, note: str) -> None:
        self._tx.run("INSERT INTO incident_log(incident_id, at, step, actor, note) VALUES (?, ?, ?, ?, ?)",
                     (incident_id, at, step, actor, note))

    def link_event(self, node_id: str, event_id: str, incident_id: str) -> None:
        self._tx.run("INSERT INTO incident_events(node_id, event_id, incident_id) VALUES (?, ?, ?) "
                     "ON CONFLICT DO NOTHING", (node_id, event_id, incident_id))

    def open_incidents_of(self, node_id: str) -> list[str]:
        return [str(r["incident_id"]) for r in self._tx.rows(
            f"SELECT incident_id FROM incidents WHERE node_id = ? AND state IN {OPEN} ORDER BY opened_at",
            (node_id,))]

    def state_of(self, incident_id: str) -> str | None:
        row = one(self._tx, "SELECT state FROM incidents WHERE incident_id = ?", (incident_id,))
        return str(row["state"]) if row else None

    def set_state(self, incident_id: str, state: str, updated_at: float, closed_at: float | None) -> None:
        self._tx.run("UPDATE incidents SET state = ?, updated_at = ?, closed_at = ? WHERE incident_id = ?",
                     (state, updated_at, closed_at, incident_id))
        self._changed(incident_id)


class RetentionTx:
    """Retention deletions inside one transaction (store and desk tables together)."""

    def __init__(self, tx: SqlTx, runner: SqlRunner) -> None:
        self._tx = tx
        self._runner = runner

    def snapshots_received_before(self, before: float) -> list[str]:
        return [str(r["snapshot_id"]) for r in self._tx.rows(
            "SELECT snapshot_id FROM snapshots WHERE received_at < ? ORDER BY received_at", (before,))]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._tx.run("DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot_id,))

    def event_payloads_received_before(self, before: float) -> list[Row]:
        """``rowid``, ``event_id`` and ``payload`` (JSON text or already decoded) of old events."""
        return self._tx.rows("SELECT rowid, event_id, payload FROM events WHERE received_at < ? ORDER BY rowid",
                             (before,))

    def replace_payload(self, rowid: int, payload: Any) -> None:
        """Store a scrubbed payload; the node's signature no longer covers it, so it is cleared."""
        self._tx.run("UPDATE events SET payload = ?, sig = NULL WHERE rowid = ?",
                     (self._runner.dialect.json_param(payload), rowid))

    def delete_access_log_before(self, before: float) -> int:
        return self._tx.run("DELETE FROM access_log WHERE at < ?", (before,))

    def log_deletion(self, at: float, kind: str, object_id: str, reason: str) -> None:
        self._tx.run("INSERT INTO retention_log(at, kind, object_id, reason) VALUES (?, ?, ?, ?)",
                     (at, kind, object_id, reason))


class DeskTables:
    """Typed access to the desk's tables of one store."""

    def __init__(self, runner: SqlRunner) -> None:
        self.runner = runner
        self._order = runner.dialect.insertion_order

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """A read: no write lock on SQLite (``SqlRunner.read``)."""
        with self.runner.read() as tx:
            return tx.rows(sql, params)

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _run(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.runner.tx() as tx:
            return tx.run(sql, params)

    # -- incidents ---------------------------------------------------------------------------
    @contextmanager
    def incident_tx(self) -> Iterator[IncidentTx]:
        """One incident transaction, serialised against every other (SQLite: BEGIN IMMEDIATE;
        PostgreSQL: a transaction-scoped advisory lock)."""
        with self.runner.tx() as tx:
            if self.runner.dialect.name == "postgres":
                tx.rows("SELECT 1 AS locked FROM (SELECT pg_advisory_xact_lock(?)) AS l", (INCIDENT_LOCK,))
            yield IncidentTx(tx, self._order)

    def incident_changes(self, since: int, limit: int) -> list[tuple[int, str]]:
        """``(change_seq, incident_id)`` of incidents changed after ``since``, in commit order
        (an incident changed twice appears once, at its latest number)."""
        return [(int(r["change_seq"]), str(r["incident_id"])) for r in self._rows(
            "SELECT change_seq, incident_id FROM incidents WHERE change_seq > ? ORDER BY change_seq LIMIT ?",
            (since, limit))]

    def incident_change_head(self) -> int:
        """The highest incident ``change_seq`` committed (0: none)."""
        row = self._one("SELECT COALESCE(MAX(change_seq), 0) AS seq FROM incidents")
        return int(row["seq"]) if row else 0

    def incident(self, incident_id: str) -> Row | None:
        return self._one("SELECT * FROM incidents WHERE incident_id = ?", (incident_id,))

    def incidents(self, *, open_only: bool, limit: int) -> list[Row]:
        """Open incidents first, then most urgent, then newest."""
        where = f"WHERE state IN {OPEN}" if open_only else ""
        return self._rows(f"SELECT * FROM incidents {where} ORDER BY "
                          f"CASE WHEN state IN {OPEN} THEN 0 ELSE 1 END, priority ASC, last_event_at DESC LIMIT ?",
                          (limit,))

    def incident_event_ids(self, incident_id: str) -> list[str]:
        return [str(r["event_id"]) for r in self._rows(
            f"SELECT event_id FROM incident_events WHERE incident_id = ? ORDER BY {self._order}", (incident_id,))]

    def incident_of_event(self, event_id: str, node_id: str | None = None) -> str | None:
        """The incident holding an event (of ``node_id`` when given: event ids are per post)."""
        if node_id is None:
            row = self._one(f"SELECT incident_id FROM incident_events WHERE event_id = ? ORDER BY {self._order} "
                            "LIMIT 1", (event_id,))
        else:
            row = self._one("SELECT incident_id FROM incident_events WHERE node_id = ? AND event_id = ?",
                            (node_id, event_id))
        return str(row["incident_id"]) if row else None

    def incident_history(self, incident_id: str) -> list[Row]:
        return self._rows("SELECT at, step, actor, note FROM incident_log WHERE incident_id = ? ORDER BY id",
                          (incident_id,))

    def false_alarm_count(self, node_id: str, since: float) -> int:
        row = self._one("SELECT COUNT(*) AS n FROM incidents WHERE node_id = ? AND state = 'false_alarm' "
                        "AND closed_at >= ?", (node_id, since))
        return int(row["n"]) if row else 0

    # -- users -------------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str, created_at: float,
                 rts: Sequence[tuple[str, int, int]]) -> bool:
        """False (and nothing written) when the name exists."""
        with self.runner.tx() as tx:
            if one(tx, "SELECT 1 AS x FROM web_users WHERE name = ?", (name,)) is not None:
                return False
            tx.run("INSERT INTO web_users(name, role, password_hash, created_at) VALUES (?, ?, ?, ?)",
                   (name, role, password_hash, created_at))
            if rts:
                tx.many("INSERT INTO web_user_rts(name, kelurahan_code, rw, rt) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING", [(name, k, rw, rt) for k, rw, rt in rts])
        return True

    def remove_user(self, name: str) -> bool:
        """Delete an account with its RTs and sessions in one transaction; False when absent."""
        with self.runner.tx() as tx:
            if one(tx, "SELECT 1 AS x FROM web_users WHERE name = ?", (name,)) is None:
                return False
            tx.run("DELETE FROM web_sessions WHERE name = ?", (name,))
            tx.run("DELETE FROM web_user_rts WHERE name = ?", (name,))
            tx.run("DELETE FROM web_users WHERE name = ?", (name,))
        return True

    def set_user_role(self, name: str, role: str, rts: Sequence[tuple[str, int, int]]) -> bool:
        """Replace an account's role and RTs in one transaction; False when absent."""
        with self.runner.tx() as tx:
            if tx.run("UPDATE web_users SET role = ? WHERE name = ?", (role, name)) == 0:
                return False
            tx.run("DELETE FROM web_user_rts WHERE name = ?", (name,))
            if rts:
                tx.many("INSERT INTO web_user_rts(name, kelurahan_code, rw, rt) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT DO NOTHING", [(name, k, rw, rt) for k, rw, rt in rts])
        return True

    def user(self, name: str) -> Row | None:
        """``name``, ``role``, ``password_hash`` of an enabled account."""
        return self._one("SELECT name, role, password_hash FROM web_users WHERE name = ? AND disabled = 0", (name,))

    def user_rts(self, name: str) -> list[tuple[str, int, int]]:
        return [(str(r["kelurahan_code"]), int(r["rw"]), int(r["rt"])) for r in self._rows(
            "SELECT kelurahan_code, rw, rt FROM web_user_rts WHERE name = ?", (name,))]

    def user_names(self) -> list[str]:
        return [str(r["name"]) for r in self._rows("SELECT name FROM web_users ORDER BY name")]

    # -- sessions and login attempts ---------------------------------------------------------
    def create_session(self, token_hash: str, name: str, csrf: str, created_at: float, expires_at: float,
                       client: str) -> None:
        with self.runner.tx() as tx:
            tx.run("DELETE FROM web_sessions WHERE expires_at < ?", (created_at,))
            tx.run("INSERT INTO web_sessions(token_hash, name, csrf, created_at, expires_at, client) "
                   "VALUES (?, ?, ?, ?, ?, ?)", (token_hash, name, csrf, created_at, expires_at, client))

    def session(self, token_hash: str) -> Row | None:
        """``name``, ``csrf``, ``expires_at``."""
        return self._one("SELECT name, csrf, expires_at FROM web_sessions WHERE token_hash = ?", (token_hash,))

    def delete_session(self, token_hash: str) -> None:
        self._run("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))

    def login_attempts(self, key: str, since: float) -> list[float]:
        return [float(r["at"]) for r in self._rows(
            "SELECT at FROM web_login_attempts WHERE key = ? AND at > ? ORDER BY at", (key, since))]

    def record_failed_login(self, keys: Sequence[str], at: float, purge_before: float) -> None:
        with self.runner.tx() as tx:
            tx.run("DELETE FROM web_login_attempts WHERE at < ?", (purge_before,))
            tx.many("INSERT INTO web_login_attempts(key, at) VALUES (?, ?)", [(k, at) for k in keys])

    def clear_login_attempts(self, key: str) -> None:
        self._run("DELETE FROM web_login_attempts WHERE key = ?", (key,))

    # -- access log, warnings, retention log, state -------------------------------------------
    def log_access(self, at: float, user: str, role: str, action: str, object_kind: str, object_id: str,
                   client: str, allowed: bool) -> None:
        self._run('INSERT INTO access_log(at, "user", role, action, object_kind, object_id, client, allowed) '
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (at, user, role, action, object_kind, object_id, client, int(allowed)))

    def access_log(self, limit: int) -> list[Row]:
        return self._rows("SELECT * FROM access_log ORDER BY id DESC LIMIT ?", (limit,))

    def recent_warning(self, node_id: str, kind: str, since: float) -> bool:
        return self._one("SELECT 1 AS x FROM web_warnings WHERE node_id = ? AND kind = ? AND at >= ?",
                         (node_id, kind, since)) is not None

    def add_warning(self, at: float, node_id: str, kind: str, message: str) -> None:
        self._run("INSERT INTO web_warnings(at, node_id, kind, message) VALUES (?, ?, ?, ?)",
                  (at, node_id, kind, message))

    def warnings(self, limit: int) -> list[Row]:
        return self._rows("SELECT * FROM web_warnings ORDER BY id DESC LIMIT ?", (limit,))

    @contextmanager
    def retention_tx(self) -> Iterator[RetentionTx]:
        with self.runner.tx() as tx:
            yield RetentionTx(tx, self.runner)

    def retention_log(self, limit: int) -> list[Row]:
        return self._rows("SELECT * FROM retention_log ORDER BY id DESC LIMIT ?", (limit,))

    def get_state(self, key: str, default: str = "") -> str:
        row = self._one("SELECT value FROM web_state WHERE key = ?", (key,))
        return str(row["value"]) if row else default

    def set_state(self, key: str, value: str) -> None:
        self._run("INSERT INTO web_state(key, value) VALUES (?, ?) "
                  "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))
