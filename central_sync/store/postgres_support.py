"""PostgreSQL helpers shared by the store and its change feed: which errors are transient, and
the NOTIFY channel and payload format."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import errors as pgerr
from psycopg_pool import PoolTimeout

from central_sync.store.base import TransientStoreError
from edge.sync.json_encoding import c_json_encoder

CHANNEL = "kentongan_changes"
#: NOTIFY payloads must stay under 8000 bytes.
_NOTIFY_MAX = 7000
_TRANSIENT = (pgerr.OperationalError, pgerr.InterfaceError, pgerr.SerializationFailure, pgerr.DeadlockDetected,
              pgerr.AdminShutdown, pgerr.CannotConnectNow, pgerr.LockNotAvailable, PoolTimeout)


#: ``json.dumps(value)`` with its default settings, its C encoder built once (``c_json_encoder``).
_JSON_TEXT = c_json_encoder(sort_keys=False, item_sep=", ", key_sep=": ", ascii_only=True)


def json_text(value: Any) -> str:
    """``json.dumps(value)``: the text psycopg's ``Jsonb`` dumper sends, for a ``text[]`` array
    that the statement casts to ``jsonb``."""
    return _JSON_TEXT(value)


def is_pg_transient(exc: BaseException) -> bool:
    """True for PostgreSQL errors that go away by themselves (restart, lost connection, ...)."""
    if isinstance(exc, TransientStoreError | PoolTimeout):
        return True
    return isinstance(exc, _TRANSIENT) and not isinstance(exc, pgerr.QueryCanceled)


def notify_chunks(prefix: str, items: Sequence[str]) -> list[str]:
    """``prefix`` + comma-joined items, cut into payloads under the NOTIFY size limit."""
    out: list[str] = []
    cur: list[str] = []
    size = len(prefix)
    for item in items:
        if cur and size + len(item) + 1 > _NOTIFY_MAX:
            out.append(prefix + ",".join(cur))
            cur, size = [], len(prefix)
        cur.append(item)
        size += len(item) + 1
    if cur:
        out.append(prefix + ",".join(cur))
    return out
