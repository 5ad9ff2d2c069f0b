"""Rejected uplink messages, counted in memory and written as one summary per node per interval.

A hostile or broken post can send garbage far faster than central can afford one database
transaction and one warning line per message (issue 10: 80,000 rejections once cost 1.7 GB). So
``RejectionAggregator.add`` only bumps a counter keyed by (node, reason) and keeps the first
sample; ``drain()`` (called by ingest every ``ingest.rejection_interval_s``) hands back one
``RejectionSummary`` per key for ONE ``store.record_rejections`` call, and logs ONE line per
node. Memory is bounded: at most ``max_keys`` distinct keys per interval (the rest are folded
into ``(None, "overflow")``), samples are truncated.

A node whose rejections within one interval reach ``flood_threshold`` is flagged as flooding
(``flooding`` maps node -> time last flagged, kept for ``flag_hold_s``), logged once per
interval, and counted in ``floods``; the dashboard reads the stored summaries or the flag.

Why not a library: the limiter needed here is "count and summarise per key per interval", not
a token bucket (limits/aiolimiter drop or delay the calls themselves); a dict is enough.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from central_sync.store_types import RejectionSummary
from edge.logs import log_event

log = logging.getLogger("central_sync.rejections")

_SAMPLE_CHARS = 300


@dataclass
class _Tally:
    count: int
    first_at: float
    last_at: float
    sample_topic: str
    sample_detail: str


class RejectionAggregator:
    """Per-interval rejection counters (single-threaded: call from ingest's event loop)."""

    def __init__(self, *, max_keys: int = 10_000, flood_threshold: int = 1000,
                 flag_hold_s: float = 3600.0, clock: Callable[[], float] = time.time) -> None:
        self.max_keys = max_keys
        self.flood_threshold = flood_threshold
        self.flag_hold_s = flag_hold_s
        self._clock = clock
        self._tallies: dict[tuple[str | None, str], _Tally] = {}
        self.flooding: dict[str, float] = {}
        self.floods = 0
        self.total = 0

    def __len__(self) -> int:
        return len(self._tallies)

    def add(self, node_id: str | None, reason: str, topic: str, detail: str) -> None:
        now = self._clock()
        self.total += 1
        key = (node_id, reason[:100])
        tally = self._tallies.get(key)
        if tally is None:
            if len(self._tallies) >= self.max_keys:
                key = (None, "overflow")
                tally = self._tallies.get(key)
            if tally is None:
                self._tallies[key] = _Tally(1, now, now, _safe(topic), _safe(detail))
                return
        tally.count += 1
        tally.last_at = now

    def drain(self) -> list[RejectionSummary]:
        """Summaries since the last drain (one per node and reason); logs one line per node."""
        tallies, self._tallies = self._tallies, {}
        now = self._clock()
        per_node: dict[str | None, dict[str, int]] = {}
        out: list[RejectionSummary] = []
        for (node, reason), t in tallies.items():
            out.append(RejectionSummary(node_id=node, reason=reason, count=t.count, first_at=t.first_at,
                                        last_at=t.last_at, sample_topic=t.sample_topic,
                                        sample_detail=t.sample_detail))
            per_node.setdefault(node, {})[reason] = t.count
        for node, reasons in per_node.items():
            total = sum(reasons.values())
            sample = next(s for s in out if s.node_id == node)
            log_event(log, "messages_rejected", logging.WARNING, node_id=node or "-", count=total,
                      reasons=reasons, sample_topic=sample.sample_topic[:200],
                      sample_detail=sample.sample_detail[:200])
            if node is not None and total >= self.flood_threshold:
                self.floods += 1
                self.flooding[node] = now
                log_event(log, "node_flooding", logging.ERROR, node_id=node, rejected=total)
        for node in [n for n, at in self.flooding.items() if now - at > self.flag_hold_s]:
            del self.flooding[node]
        return out


def _safe(text: str) -> str:
    """Bounded text that any database and log can hold (lone surrogates replaced)."""
    return text[:_SAMPLE_CHARS].encode("utf-8", "replace").decode("utf-8")
