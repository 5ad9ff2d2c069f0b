"""Typed seam between central's ingest and its store backends (SQLite and PostgreSQL).

Ingest calls only these batch operations on the store; each backend implements them in ONE
transaction per call, so a commit batch costs one fsync whatever it carries:

* ``commit_events(envs, received_at) -> EventCommit``: insert new events, report duplicates,
  and reject (never raise for) rows the store cannot hold (out-of-range integers, strings the
  database cannot encode such as lone UTF-16 surrogates, ...). A batch that fails to commit is
  split so that only the offending rows are rejected and the rest are committed.
* ``apply_node_updates(updates, received_at)``: presence and heartbeat state coalesced per node
  (the newest per node wins), written together.
* ``record_rejections(rows)``: aggregated rejection counts per (node, reason) for one interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RejectedRow:
    """One envelope the store refused; ``reason`` is a short code (``out_of_range``, ``bad_text``,
    ``internal``), ``detail`` a bounded human text."""

    event_id: str
    reason: str
    detail: str


@dataclass
class EventCommit:
    """What one ``commit_events`` call did, by event id."""

    inserted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)


@dataclass(frozen=True)
class RejectionSummary:
    """Rejections of one kind from one node (``None``: unknown sender) within one interval."""

    node_id: str | None
    reason: str
    count: int
    first_at: float
    last_at: float
    sample_topic: str
    sample_detail: str
