"""Durable event outbox: every event the node raises, kept in SQLite until central acknowledges
it. A package of small modules around one shared database object (see ``core.py`` and
docs/storage.md); the names other modules import are re-exported here."""

from edge.outbox.core import Outbox
from edge.outbox.db import OutboxDB, StorageUnavailable
from edge.outbox.receipts import Receipt
from edge.outbox.records import INSERT as _INSERT
from edge.outbox.records import EventDraft, StoredEvent, new_event_ids
from edge.outbox.writer import BATCH_MAX
from edge.storage import StorageQuota

__all__ = [
           "BATCH_MAX",
           "_INSERT",
           "EventDraft",
           "Outbox",
           "OutboxDB",
           "Receipt",
           "StorageQuota",
           "StorageUnavailable",
           "StoredEvent",
           "new_event_ids",
]
