"""SQLite schema of the desk's tables (sqlite-utils ``Migrations`` set ``kentongan_web``, the
name it always had, so existing files keep their history), beside the store's tables."""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

desk_migrations = Migrations("kentongan_web")


@desk_migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS web_users (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            created_at REAL NOT NULL,
            disabled INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE IF NOT EXISTS web_user_rts (
            name TEXT NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
            kelurahan_code TEXT NOT NULL,
            rw INTEGER NOT NULL,
            rt INTEGER NOT NULL,
            PRIMARY KEY (name, kelurahan_code, rw, rt)
        );
        CREATE TABLE IF NOT EXISTS web_sessions (
            token_hash TEXT PRIMARY KEY,
            name TEXT NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
            csrf TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            client TEXT
        );
        CREATE TABLE IF NOT EXISTS web_login_attempts (
            key TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS web_login_attempts_key ON web_login_attempts(key, at);
        CREATE TABLE IF NOT EXISTS access_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            user TEXT NOT NULL,
            role TEXT NOT NULL,
            action TEXT NOT NULL,
            object_kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            client TEXT,
            allowed INTEGER NOT NULL DEFAULT 1
        );
        CREATE TABLE IF NOT EXISTS incidents (
            incident_id TEXT PRIMARY KEY,
            node_id TEXT NOT NULL,
            type TEXT NOT NULL,
            priority INTEGER NOT NULL,
            state TEXT NOT NULL,
            opened_at REAL NOT NULL,
            last_event_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            closed_at REAL,
            time_quality TEXT,
            event_count INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS incidents_open ON incidents(node_id, type, state);
        CREATE TABLE IF NOT EXISTS incident_events (
            event_id TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE
        );
        CREATE INDEX IF NOT EXISTS incident_events_incident ON incident_events(incident_id);
        CREATE TABLE IF NOT EXISTS incident_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id TEXT NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE,
            at REAL NOT NULL,
            step TEXT NOT NULL,
            actor TEXT NOT NULL,
            note TEXT NOT NULL DEFAULT ''
        );
        CREATE TABLE IF NOT EXISTS web_warnings (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            node_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS retention_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            reason TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS web_state (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        """
    )


@desk_migrations()
def m002_incident_events_per_node(db: Database) -> None:
    """Key incident membership by (node_id, event_id), like the events themselves: a post reusing
    another post's event id cannot keep that post's event out of an incident."""
    db.executescript(
        """
        CREATE TABLE incident_events_new (
            node_id TEXT NOT NULL,
            event_id TEXT NOT NULL,
            incident_id TEXT NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE,
            PRIMARY KEY (node_id, event_id)
        );
        INSERT INTO incident_events_new (node_id, event_id, incident_id)
            SELECT i.node_id, e.event_id, e.incident_id
            FROM incident_events e JOIN incidents i ON i.incident_id = e.incident_id ORDER BY e.rowid;
        DROP TABLE incident_events;
        ALTER TABLE incident_events_new RENAME TO incident_events;
        CREATE INDEX incident_events_incident ON incident_events(incident_id);
        CREATE INDEX incident_events_event ON incident_events(event_id);
        """
    )


@desk_migrations()
def m003_incident_change_seq(db: Database) -> None:
    """A durable, commit-ordered change number per incident (the desk's live-stream ids, the
    same in every web process and across restarts; see ``IncidentTx``)."""
    db.executescript(
        """
        ALTER TABLE incidents ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX incidents_change_seq ON incidents(change_seq);
        """
    )


@desk_migrations()
def m004_audit_log(db: Database) -> None:
    """The administrative audit log (``central_sync.audit``). ``IF NOT EXISTS``: files written by
    the first audit log, which kept the same table under its own migration set
    (``kentongan.central.audit``), keep their rows."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS audit_log (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            detail TEXT NOT NULL,
            client TEXT
        );
        CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log(at);
        """
    )


@desk_migrations()
def m005_supervision(db: Database) -> None:
    """Post supervision (``central_sync.supervision``): each ingest process's link beat, one row
    per post outage keyed by (post, outage start) so any number of sweepers open one POST_OFFLINE
    incident per outage, each post's first sighting (the availability window starts there), and
    an index for the escalation check on the incident log."""
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS central_links (
            process_id TEXT PRIMARY KEY,
            connected_since REAL NOT NULL,
            beat_at REAL NOT NULL,
            last_message_at REAL
        );
        CREATE TABLE IF NOT EXISTS post_outages (
            node_id TEXT NOT NULL,
            started_at REAL NOT NULL,
            detected_at REAL NOT NULL,
            restored_at REAL,
            incident_id TEXT,
            PRIMARY KEY (node_id, started_at)
        );
        CREATE INDEX IF NOT EXISTS post_outages_open ON post_outages(restored_at);
        CREATE TABLE IF NOT EXISTS post_first_seen (
            node_id TEXT PRIMARY KEY,
            first_seen REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS incident_log_step ON incident_log(incident_id, step);
        """
    )


@desk_migrations()
def m006_siren_activations(db: Database) -> None:
    """Siren activations central started and the commands of each (``siren_tables.py``)."""
    db.executescript(
        """
        CREATE TABLE siren_activations (
            activation_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            scope TEXT NOT NULL,
            label TEXT NOT NULL,
            incident_id TEXT,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            stopped_at REAL,
            stopped_by TEXT
        );
        CREATE INDEX siren_activations_incident ON siren_activations(incident_id);
        CREATE INDEX siren_activations_created ON siren_activations(created_at);
        CREATE TABLE siren_commands (
            command_id TEXT PRIMARY KEY,
            activation_id TEXT NOT NULL,
            node_id TEXT NOT NULL,
            role TEXT NOT NULL
        );
        CREATE INDEX siren_commands_activation ON siren_commands(activation_id, role);
        """
    )
