"""Central's store: one typed interface (``base.Store``), two backends.

* ``sqlite:///path/to/central.db`` (the embedded default: demo, one-machine installs) ->
  ``sqlite.CentralStore``;
* ``postgresql://user@host:port/db`` (a city) -> ``postgres.PostgresStore``.

``open_store(url)`` picks the backend; ``is_transient(exc)`` tells callers which errors to retry.
See docs/central-store.md.
"""

from __future__ import annotations

from central_sync.store.base import (
    STALE_AFTER_SECONDS,
    ChangeFeed,
    ChangeMark,
    Changes,
    Row,
    Store,
    TransientStoreError,
)
from central_sync.store.factory import is_transient, open_store, redact_url
from central_sync.store.sqlite import CentralStore, migrations

__all__ = [
    "STALE_AFTER_SECONDS",
    "CentralStore",
    "ChangeFeed",
    "ChangeMark",
    "Changes",
    "Row",
    "Store",
    "TransientStoreError",
    "is_transient",
    "migrations",
    "open_store",
    "redact_url",
]
