"""PostgreSQL schema of central's store: ordered migrations applied under an advisory lock, and
the monthly partitions of ``events``.

De-duplication key and partitioning (see docs/central-store.md):

* ``events`` is partitioned by RANGE on ``received_at`` (central's own clock, epoch seconds), one
  partition per calendar month (UTC), plus a DEFAULT partition as a safety net. A post cannot
  choose the partition of its rows, and old months are dropped whole by retention.
* A unique key on a partitioned table must contain the partition column, so the de-duplication
  key ``(node_id, event_id)`` lives in the small unpartitioned table ``event_keys`` (primary key
  ``(node_id, event_id)``, plus the event's ``rowid`` and ``received_at``). ``commit_events``
  inserts into ``event_keys ... ON CONFLICT DO NOTHING RETURNING`` and writes ``events`` rows only
  for the keys it got back, in the same transaction: exact de-duplication for as long as the keys
  are kept, whatever month a resend arrives in.
"""

from __future__ import annotations

import datetime as dt

import psycopg

#: pg_advisory_lock key of central's migrations ("kentongan" in ASCII, cut to 63 bits).
MIGRATION_LOCK = 0x6B656E746F6E67

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_store", """
        CREATE SEQUENCE events_rowid_seq;
        CREATE SEQUENCE node_change_seq;
        CREATE TABLE event_keys (
            node_id text NOT NULL,
            event_id text NOT NULL,
            rowid bigint NOT NULL DEFAULT nextval('events_rowid_seq'),
            received_at double precision NOT NULL,
            PRIMARY KEY (node_id, event_id)
        );
        CREATE INDEX event_keys_received ON event_keys (received_at);
        CREATE TABLE events (
            rowid bigint NOT NULL,
            event_id text NOT NULL,
            node_id text NOT NULL,
            boot_id text NOT NULL,
            seq bigint NOT NULL,
            mono_ns bigint NOT NULL,
            wall_time double precision NOT NULL,
            time_quality text NOT NULL,
            type text NOT NULL,
            priority integer NOT NULL,
            incident_id text,
            payload jsonb NOT NULL,
            sig text,
            received_at double precision NOT NULL
        ) PARTITION BY RANGE (received_at);
        CREATE TABLE events_default PARTITION OF events DEFAULT;
        CREATE INDEX events_rowid ON events (rowid);
        CREATE INDEX events_node_rowid ON events (node_id, rowid);
        CREATE INDEX events_event_id ON events (event_id);
        CREATE INDEX events_type_node ON events (type, node_id, wall_time);
        CREATE TABLE snapshots (
            snapshot_id text PRIMARY KEY,
            event_id text,
            node_id text NOT NULL,
            taken_at double precision NOT NULL,
            content_type text NOT NULL,
            sealed boolean NOT NULL,
            data bytea NOT NULL,
            size integer NOT NULL,
            sig text,
            received_at double precision NOT NULL
        );
        CREATE INDEX snapshots_event ON snapshots (event_id);
        CREATE INDEX snapshots_node ON snapshots (node_id, taken_at);
        CREATE TABLE nodes (
            node_id text PRIMARY KEY,
            online boolean NOT NULL DEFAULT false,
            boot_id text,
            version text,
            last_seen double precision,
            presence_at double precision,
            heartbeat_at double precision,
            backlog bigint,
            outbox text,
            siren text,
            time_quality text,
            clock_offset double precision,
            kelurahan_code text,
            rw bigint,
            rt bigint,
            display_name text,
            change_seq bigint NOT NULL DEFAULT 0
        );
        CREATE INDEX nodes_change_seq ON nodes (change_seq);
        CREATE TABLE rejections (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            node_id text,
            topic text NOT NULL,
            reason text NOT NULL,
            detail text NOT NULL,
            at double precision NOT NULL,
            count bigint NOT NULL DEFAULT 1,
            last_at double precision
        );
        CREATE INDEX rejections_reason ON rejections (reason);
        CREATE TABLE commands (
            command_id text PRIMARY KEY,
            node_id text NOT NULL,
            action text NOT NULL,
            params text NOT NULL,
            issued_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            issuer text NOT NULL,
            issued_by text NOT NULL,
            signed boolean NOT NULL,
            status text NOT NULL,
            result_ok boolean,
            result_detail text,
            result_data text,
            result_at double precision,
            result_received_at double precision
        );
        CREATE INDEX commands_node ON commands (node_id, issued_at);
    """),
    ("0002_desk", """
        CREATE TABLE web_users (
            name text PRIMARY KEY,
            role text NOT NULL,
            password_hash text NOT NULL,
            created_at double precision NOT NULL,
            disabled integer NOT NULL DEFAULT 0
        );
        CREATE TABLE web_user_rts (
            name text NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
            kelurahan_code text NOT NULL,
            rw bigint NOT NULL,
            rt bigint NOT NULL,
            PRIMARY KEY (name, kelurahan_code, rw, rt)
        );
        CREATE TABLE web_sessions (
            token_hash text PRIMARY KEY,
            name text NOT NULL REFERENCES web_users(name) ON DELETE CASCADE,
            csrf text NOT NULL,
            created_at double precision NOT NULL,
            expires_at double precision NOT NULL,
            client text
        );
        CREATE TABLE web_login_attempts (
            key text NOT NULL,
            at double precision NOT NULL
        );
        CREATE INDEX web_login_attempts_key ON web_login_attempts(key, at);
        CREATE TABLE access_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            "user" text NOT NULL,
            role text NOT NULL,
            action text NOT NULL,
            object_kind text NOT NULL,
            object_id text NOT NULL,
            client text,
            allowed integer NOT NULL DEFAULT 1
        );
        CREATE INDEX access_log_at ON access_log(at);
        CREATE TABLE incidents (
            incident_id text PRIMARY KEY,
            node_id text NOT NULL,
            type text NOT NULL,
            priority integer NOT NULL,
            state text NOT NULL,
            opened_at double precision NOT NULL,
            last_event_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            closed_at double precision,
            time_quality text,
            event_count bigint NOT NULL DEFAULT 0
        );
        CREATE INDEX incidents_open ON incidents(node_id, type, state);
        CREATE TABLE incident_events (
            node_id text NOT NULL,
            event_id text NOT NULL,
            incident_id text NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE,
            seq bigint GENERATED ALWAYS AS IDENTITY,
            PRIMARY KEY (node_id, event_id)
        );
        CREATE INDEX incident_events_incident ON incident_events(incident_id, seq);
        CREATE INDEX incident_events_event ON incident_events(event_id);
        CREATE TABLE incident_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            incident_id text NOT NULL REFERENCES incidents(incident_id) ON DELETE CASCADE,
            at double precision NOT NULL,
            step text NOT NULL,
            actor text NOT NULL,
            note text NOT NULL DEFAULT ''
        );
        CREATE INDEX incident_log_incident ON incident_log(incident_id, id);
        CREATE TABLE web_warnings (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            node_id text NOT NULL,
            kind text NOT NULL,
            message text NOT NULL
        );
        CREATE TABLE retention_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            kind text NOT NULL,
            object_id text NOT NULL,
            reason text NOT NULL
        );
        CREATE TABLE web_state (
            key text PRIMARY KEY,
            value text NOT NULL
        );
    """),
    ("0003_registry", """
        CREATE TABLE node_registry (
            node_id text PRIMARY KEY,
            signing_public_key text NOT NULL,
            kelurahan_code text NOT NULL,
            rw bigint NOT NULL,
            rt bigint NOT NULL,
            display_name text NOT NULL,
            status text NOT NULL CHECK (status IN ('enrolled', 'revoked')),
            cert_serial text NOT NULL,
            cert_not_after double precision NOT NULL,
            enrolled_at double precision NOT NULL,
            revoked_at double precision
        );
        CREATE TABLE node_certs (
            serial text PRIMARY KEY,
            node_id text NOT NULL REFERENCES node_registry(node_id),
            not_after double precision NOT NULL,
            issued_at double precision NOT NULL,
            revoked_at double precision
        );
        CREATE INDEX node_certs_node ON node_certs(node_id);
        CREATE TABLE event_digests (
            node_id text NOT NULL,
            event_id text NOT NULL,
            digest bytea NOT NULL,
            seen_at double precision NOT NULL,
            PRIMARY KEY (node_id, event_id)
        );
    """),
    ("0004_incident_change_seq", """
        ALTER TABLE incidents ADD COLUMN change_seq bigint NOT NULL DEFAULT 0;
        CREATE INDEX incidents_change_seq ON incidents(change_seq);
    """),
    ("0005_audit_log", """
        CREATE TABLE audit_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at double precision NOT NULL,
            actor text NOT NULL,
            action text NOT NULL,
            target text NOT NULL,
            detail text NOT NULL,
            client text
        );
        CREATE INDEX audit_log_at ON audit_log(at);
    """),
    ("0006_registry_place", """
        ALTER TABLE node_registry ADD COLUMN lat double precision;
        ALTER TABLE node_registry ADD COLUMN lon double precision;
        CREATE TABLE security_events (
            node_id text NOT NULL,
            kind text NOT NULL,
            claimed text NOT NULL,
            registered text NOT NULL,
            count bigint NOT NULL,
            first_at double precision NOT NULL,
            last_at double precision NOT NULL,
            PRIMARY KEY (node_id, kind)
        );
    """),
    ("0007_supervision", """
        CREATE TABLE central_links (
            process_id text PRIMARY KEY,
            connected_since double precision NOT NULL,
            beat_at double precision NOT NULL,
            last_message_at double precision
        );
        CREATE TABLE post_outages (
            node_id text NOT NULL,
            started_at double precision NOT NULL,
            detected_at double precision NOT NULL,
            restored_at double precision,
            incident_id text,
            PRIMARY KEY (node_id, started_at)
        );
        CREATE INDEX post_outages_open ON post_outages(restored_at);
        CREATE TABLE post_first_seen (
            node_id text PRIMARY KEY,
            first_seen double precision NOT NULL
        );
        CREATE INDEX incident_log_step ON incident_log(incident_id, step);
    """),
    ("0008_siren_activations", """
        CREATE TABLE siren_activations (
            activation_id text PRIMARY KEY,
            kind text NOT NULL,
            scope text NOT NULL,
            label text NOT NULL,
            incident_id text,
            created_by text NOT NULL,
            created_at double precision NOT NULL,
            stopped_at double precision,
            stopped_by text
        );
        CREATE INDEX siren_activations_incident ON siren_activations(incident_id);
        CREATE INDEX siren_activations_created ON siren_activations(created_at);
        CREATE TABLE siren_commands (
            command_id text PRIMARY KEY,
            activation_id text NOT NULL,
            node_id text NOT NULL,
            role text NOT NULL
        );
        CREATE INDEX siren_commands_activation ON siren_commands(activation_id, role);
    """),
    # Fewer index entries written per stored event (docs/central-store.md, "Indexes on the hot
    # insert"): look-ups by event id name the post and go through event_keys' primary key; the
    # type index holds only the types the posts page asks for (rows.TIMED_TYPES_SQL).
    ("0009_lean_event_indexes", """
        DROP INDEX IF EXISTS events_event_id;
        DROP INDEX IF EXISTS events_type_node;
        CREATE INDEX events_type_node ON events (type, node_id, wall_time)
            WHERE type IN ('SELFTEST', 'SIREN_TEST', 'SIREN_FAULT');
    """),
]


def migrate(conn: psycopg.Connection) -> list[str]:
    """Apply pending migrations under ``pg_advisory_lock``; return the names applied now.

    ``conn`` must be in autocommit mode; each migration runs in its own transaction with its
    record in ``kentongan_migrations``. Concurrent callers wait on the lock, then find nothing to do.
    """
    applied_now: list[str] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS kentongan_migrations (name text PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r[0] for r in conn.execute("SELECT name FROM kentongan_migrations").fetchall()}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            with conn.transaction():
                conn.execute(sql.encode())
                conn.execute("INSERT INTO kentongan_migrations (name) VALUES (%s)", (name,))
            applied_now.append(name)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
    return applied_now


def month_start(ts: float) -> dt.datetime:
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)


def next_month(d: dt.datetime) -> dt.datetime:
    return dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.UTC)


def partition_name(start: dt.datetime) -> str:
    return f"events_{start:%Y_%m}"
