"""The typed interface of central's store; ``sqlite.py`` and ``postgres.py`` implement it.

``Store`` is everything ingest, the CLI and the desk may ask of central's database. Rows are
plain dicts with the column names documented on each method (``Row``), so both backends return
the same shapes and the contract tests (tests/test_central_store*.py) run unchanged on both.

Errors: a backend raises ``TransientStoreError`` (or a driver error for which ``is_transient`` is
true) for conditions that go away by themselves (database locked, server restarting, connection
lost); callers retry those with backoff. Everything else is a ``StoreError`` (or a bug).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from central_sync.errors import StoreError
from central_sync.store_types import EventCommit, RejectionSummary
from edge.sync.wire import Command, CommandResult, EventEnvelope, Heartbeat, Presence, SnapshotEnvelope

if TYPE_CHECKING:
    from central_sync.store.audit_tables import AuditTables
    from central_sync.store.desk_tables import DeskTables
    from central_sync.store.registry_tables import RegistryTables
    from central_sync.store.siren_tables import SirenTables

#: One stored row, column name -> value (JSON columns already decoded).
Row = dict[str, Any]

#: The presence fields central writes into a post's ``nodes`` row (liveness state aside).
PRESENCE_APPLIED = ("boot_id", "version")

#: Seconds without presence or heartbeat after which a node is shown as "stale".
STALE_AFTER_SECONDS = 300.0


class TransientStoreError(StoreError):
    """The database is unavailable for now (locked, restarting, connection lost): retry later."""


@dataclass(frozen=True)
class ChangeMark:
    """Where a change-feed reader is: the highest event ``rowid`` and node ``change_seq`` seen."""

    event_rowid: int = 0
    node_seq: int = 0


@dataclass
class Changes:
    """What other processes committed since a ``ChangeMark``: new events (rows, arrival order)
    and nodes whose state changed (full node rows as ``list_nodes`` gives them)."""

    events: list[Row] = field(default_factory=list)
    nodes: list[Row] = field(default_factory=list)
    mark: ChangeMark = field(default_factory=ChangeMark)
    #: True when ``nodes`` is the complete node table (first read, or after a lost connection):
    #: the reader replaces its copy instead of updating it.
    resync: bool = False


class ChangeFeed(Protocol):
    """Commits made by any process, for the desk: PostgreSQL LISTEN/NOTIFY, SQLite polling."""

    def head(self) -> ChangeMark:
        """The mark of what is committed now (follow from here to skip history)."""
        ...

    def wait(self, mark: ChangeMark, timeout: float) -> Changes:
        """Block up to ``timeout`` s until something newer than ``mark`` is committed; return it
        (empty ``Changes`` with the same mark on timeout). Call from a worker thread."""
        ...

    def close(self) -> None: ...


class EventStore(Protocol):
    def commit_events(self, envs: Sequence[EventEnvelope], received_at: float) -> EventCommit: ...

    def insert_events(self, envs: Sequence[EventEnvelope], received_at: float) -> tuple[list[str], list[str]]: ...

    def get_events(self, event_ids: Sequence[str], node_id: str | None = None) -> list[Row]: ...

    def get_event(self, event_id: str, node_id: str | None = None) -> Row | None: ...

    def list_events(self, *, node_id: str | None = None, since_rowid: int = 0, limit: int = 1000) -> list[Row]: ...

    def latest_events(self, *, node_id: str | None = None, limit: int = 20) -> list[Row]: ...

    def last_event_times(self, event_type: str) -> dict[str, float]: ...

    def count_events(self, node_id: str | None = None) -> int: ...


class SnapshotStore(Protocol):
    def insert_snapshot(self, env: SnapshotEnvelope, received_at: float) -> bool: ...

    def get_snapshot(self, snapshot_id: str) -> Row | None: ...

    def list_snapshots(self, *, event_id: str | None = None, node_id: str | None = None) -> list[Row]: ...


class NodeStore(Protocol):
    def apply_node_updates(self, presences: Sequence[Presence], heartbeats: Sequence[Heartbeat],
                           received_at: float) -> None: ...

    def upsert_presence(self, p: Presence, received_at: float) -> None: ...

    def upsert_heartbeat(self, h: Heartbeat, received_at: float) -> None: ...

    def touch_node(self, node_id: str, received_at: float) -> None: ...

    def list_nodes(self, *, now: float | None = None) -> list[Row]: ...


class RejectionStore(Protocol):
    def record_rejections(self, rows: Sequence[RejectionSummary]) -> None: ...

    def record_rejection(self, *, node_id: str | None, topic: str, reason: str, detail: str, at: float) -> None: ...

    def rejection_counts(self) -> dict[str, int]: ...

    def list_rejections(self, limit: int = 100) -> list[Row]: ...


class CommandStore(Protocol):
    def record_command(self, cmd: Command, *, issued_by: str) -> None: ...

    def record_command_result(self, r: CommandResult, received_at: float) -> None: ...

    def record_command_results(self, results: Sequence[CommandResult], received_at: float) -> None:
        """Many answers in one transaction."""
        ...

    def list_commands(self, node_id: str | None = None) -> list[Row]: ...


class Store(EventStore, SnapshotStore, NodeStore, RejectionStore, CommandStore, Protocol):
    """Central's database (one object per process; thread-safe)."""

    url: str

    def change_feed(self) -> ChangeFeed: ...

    def desk(self) -> DeskTables:
        """The desk's tables (incidents, users, sessions, access log, ...) in this store."""
        ...

    def registry_tables(self) -> RegistryTables:
        """The node registry's tables in this store."""
        ...

    def audit_tables(self) -> AuditTables:
        """The administrative audit log in this store (``central_sync.audit``)."""
        ...

    def siren_tables(self) -> SirenTables:
        """Siren activations central started (``central_sync.siren_control``)."""
        ...

    def close(self) -> None: ...


def node_status(online: bool, last_seen: float | None, now: float) -> str:
    """online / stale / offline / unknown, the same on every backend."""
    if last_seen is None:
        return "unknown"
    if not online:
        return "offline"
    if now - last_seen > STALE_AFTER_SECONDS:
        return "stale"
    return "online"


def coalesce_nodes(presences: Sequence[Presence], heartbeats: Sequence[Heartbeat]
                   ) -> tuple[dict[str, Heartbeat], dict[str, Presence], dict[str, dict[str, Any]]]:
    """The newest heartbeat and presence per node (input is in arrival order), plus the fields
    any presence of the batch carried that central applies (boot_id, version), newest first.

    A presence's place and name (kelurahan, RW, RT, display name) are NEVER applied: identity
    and place come from the enrolment registry only (``central_sync.place_check`` compares
    them and records a disagreement as a security event)."""
    beats: dict[str, Heartbeat] = {}
    for h in heartbeats:
        beats[h.node_id] = h
    pres: dict[str, Presence] = {}
    ident: dict[str, dict[str, Any]] = {}
    for p in presences:
        pres[p.node_id] = p
        fields = ident.setdefault(p.node_id, {})
        for col in PRESENCE_APPLIED:
            value = getattr(p, col)
            if value is not None:
                fields[col] = value
    for node_id, fields in ident.items():
        if node_id in beats:  # a heartbeat always carries boot_id and version: it is the fresher source
            fields.pop("boot_id", None)
            fields.pop("version", None)
    return beats, pres, ident
