"""Room on a full disk: may a transaction make the database file grow?

In WAL mode a page the database file does not have yet costs two blocks: a WAL frame at
``COMMIT``, then a block of the database file when the checkpoint copies the page back. On a
full filesystem the second one is a trap. Once the WAL holds committed pages beyond the end of
the database file and the free blocks are gone (the next transaction that did not fit grew the
WAL into them: SQLite never shrinks the WAL after a rollback), the checkpoint can never finish,
so the WAL can never start over, so no transaction can commit again (no eviction, no claim, no
ack) until something outside the outbox frees space. Seen under load in
``test_storage_full_disk``: PANIC bursts failed with ``StorageFullError`` while 3,000 evictable
P4 events were still stored.

While the disk is under pressure the writer therefore calls ``check`` inside each transaction,
after its inserts and before ``COMMIT``: the pages the database file would have to grow by,
plus a bound on the WAL frames the commit writes, must fit in the free space. Otherwise
``NoRoom`` rolls the transaction back and the writer evicts first; evicted pages stay in the
file (on its freelist) and the retried insert reuses them in place, so the checkpoint needs no
new block. Rows deleted, updated or inserted into free pages never make the file grow.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from edge.errors import StorageFullError
from edge.storage import free_bytes

__all__ = ["SLACK_PAGES", "NoRoom", "check", "freelist_pages"]

#: WAL frames allowed for pages a commit changes in place (b-tree parents, index leaves, the
#: header page, the meta row): about 5 trees x (depth 4 + a few priorities), doubled. What a
#: commit allocates (new or reused pages) is counted exactly on top. It also keeps that much
#: WAL room for the claims and acks that follow.
SLACK_PAGES = 64
_FRAME_HEADER = 24


class NoRoom(StorageFullError):
    """The transaction would make the database file grow by more than the disk can take."""

    def __init__(self, grow_pages: int, need: int, free: int) -> None:
        super().__init__(f"disk full: the database file would grow by {grow_pages} pages "
                         f"({need} bytes with the WAL frames of the commit), {free} bytes free")
        self.grow_pages = grow_pages
        self.short = need - free


def freelist_pages(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA freelist_count").fetchone()[0])


def check(conn: sqlite3.Connection, path: Path, freelist_before: int) -> None:
    """Raise ``NoRoom`` when committing the open transaction of ``conn`` could leave WAL pages
    the database file at ``path`` cannot take (see the module doc). ``freelist_before``: the
    free pages before this transaction's inserts."""
    page = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    try:
        in_file = os.stat(path).st_size // page
    except OSError:
        in_file = 0
    grow = pages - in_file  # also counts pages earlier commits left only in the WAL
    if grow <= 0:
        return
    reused = max(0, freelist_before - freelist_pages(conn))
    need = grow * page + (grow + reused + SLACK_PAGES) * (page + _FRAME_HEADER)
    try:
        free = free_bytes(path.parent)
    except OSError:
        free = 0
    if free < need:
        raise NoRoom(grow, need, free)
