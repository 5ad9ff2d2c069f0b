"""Opening a store from its URL, and the one ``is_transient`` predicate for both backends."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from central_sync.errors import StoreError
from central_sync.store.base import Store, TransientStoreError
from central_sync.store.sqlite import CentralStore, is_sqlite_transient


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///path`` URL (None for any other scheme)."""
    if not url.startswith("sqlite:"):
        return None
    rest = url[len("sqlite:"):]
    if rest.startswith("///"):
        rest = rest[3:]  # sqlite:///rel/path.db (relative), sqlite:////abs/path.db (absolute)
    else:
        raise StoreError(f"sqlite URL needs three slashes: sqlite:///path ({url!r})")
    if not rest:
        raise StoreError("sqlite URL without a path")
    return Path(rest)


def redact_url(url: str) -> str:
    """The URL without a password (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return parts._replace(netloc=netloc).geturl()


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in ("postgresql", "postgres")


def open_store(url: str) -> Store:
    """Open (and migrate) the store at ``url``."""
    path = sqlite_path(url)
    if path is not None:
        return CentralStore(path)
    if is_postgres_url(url):
        from central_sync.store.postgres import PostgresStore

        return PostgresStore(url)
    raise StoreError(f"unknown store URL scheme: {url.split(':', 1)[0]!r} (sqlite:///... or postgresql://...)")


def is_transient(exc: BaseException) -> bool:
    """True for store errors that go away by themselves (SQLite locked/busy, PostgreSQL
    restarting or connection lost): retry those with backoff."""
    if isinstance(exc, TransientStoreError) or is_sqlite_transient(exc):
        return True
    try:
        from central_sync.store.postgres_support import is_pg_transient
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    return is_pg_transient(exc)
