"""A post's claimed place against the enrolment registry (issue 10, item 1).

Identity and place come from the registry only: kelurahan, RW, RT and name are given at
``kentongan-central enrol`` and are what central routes, scopes and shows by (the store joins
``nodes`` with ``node_registry``, ``central_sync.store.rows.NODE_SELECT``). A presence still
carries the place written in the post's own ``node.toml``; central never applies it
(``central_sync.store.base.PRESENCE_APPLIED``: only liveness, boot id and version). This module
compares it with the registry: a presence that claims another kelurahan, RW or RT than the one
the post was enrolled with (a stolen post whose config was edited, a technician's mistake) is a
security event, recorded in ``security_events`` and shown to admins on the desk.

Flood-proof: mismatches are counted in memory per node and written at most once per node per
``interval_s`` (the first one at once), one row per (node, kind) with a running count, so a post
cannot grow the table or the log by sending presences. Only enrolled posts are compared (an
unknown sender is the authentication check's business), so memory is bounded by the registry.
Events carry no place on the wire (``edge.sync.wire.EventEnvelope``); central reads none from
their payloads.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from central_sync.store.registry_tables import RegistryTables, SecurityEventRow
from edge.logs import log_event
from edge.sync.wire import Presence

log = logging.getLogger("central_sync.place_check")

#: ``security_events.kind`` of a place claim that contradicts the registry.
PLACE_MISMATCH = "place_mismatch"
#: The presence fields that make up a place claim.
PLACE_FIELDS = ("kelurahan_code", "rw", "rt")


def claimed_place(p: Presence) -> dict[str, Any]:
    """The place fields this presence carries (none: it claims nothing)."""
    return {f: getattr(p, f) for f in PLACE_FIELDS if getattr(p, f) is not None}


def disagrees(claim: Mapping[str, Any], registered: Mapping[str, Any]) -> bool:
    """True when any claimed field differs from the registry's value."""
    for f, value in claim.items():
        reg = registered.get(f)
        if f == "kelurahan_code":
            if str(value) != str(reg):
                return True
        elif reg is None or int(value) != int(reg):
            return True
    return False


def _text(place: Mapping[str, Any]) -> str:
    return json.dumps({f: place.get(f) for f in PLACE_FIELDS}, separators=(",", ":"), ensure_ascii=True)[:300]


@dataclass
class _Pending:
    claimed: str
    registered: str
    count: int
    first_at: float
    last_at: float


class PlaceCheck:
    """Compares the presences of each commit batch with the registry and records mismatches.

    Called from ingest's worker thread (``ingest_commit.BatchWriter``), one batch at a time."""

    def __init__(self, tables: RegistryTables, *, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.tables = tables
        self.interval_s = interval_s
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._written_at: dict[str, float] = {}
        #: Presences whose place disagreed with the registry (this process, since start).
        self.mismatches = 0

    def observe(self, presences: Sequence[Presence], now: float) -> int:
        """Count the presences that claim another place than the registry's; returns how many."""
        claims = {p.node_id: c for p in presences if (c := claimed_place(p))}
        if not claims:
            return 0
        found = 0
        for node_id, reg in self.tables.places(list(claims)).items():
            claim = claims[node_id]
            if not disagrees(claim, reg):
                continue
            found += 1
            pend = self._pending.get(node_id)
            if pend is None:
                self._pending[node_id] = _Pending(_text(claim), _text(reg), 1, now, now)
            else:
                pend.claimed, pend.registered = _text(claim), _text(reg)
                pend.count += 1
                pend.last_at = now
        self.mismatches += found
        return found

    def due(self, now: float, *, everything: bool = False) -> list[SecurityEventRow]:
        """Pending counts of nodes not written within ``interval_s`` (all with ``everything``)."""
        out = []
        for node_id, pend in self._pending.items():
            last = self._written_at.get(node_id)
            if everything or last is None or now - last >= self.interval_s:
                out.append(SecurityEventRow(node_id, PLACE_MISMATCH, pend.claimed, pend.registered,
                                            pend.count, pend.first_at, pend.last_at))
        return out

    def write(self, presences: Sequence[Presence], now: float | None = None, *,
              everything: bool = False) -> int:
        """``observe`` then write what is due in one store call; never raises (a failed write
        keeps the counts for the next batch). Returns the mismatches found in ``presences``."""
        t = self._clock() if now is None else now
        try:
            found = self.observe(presences, t)
            rows = self.due(t, everything=everything)
            if rows:
                self.tables.record_security_events(rows)
        except Exception as exc:  # the check must never stop ingest
            log_event(log, "place_check_failed", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])
            return 0
        for row in rows:
            self._pending.pop(row.node_id, None)
            self._written_at[row.node_id] = t
            log_event(log, "place_mismatch", logging.WARNING, node_id=row.node_id, claimed=row.claimed,
                      registered=row.registered, count=row.count)
        return found

    def flush(self) -> None:
        """Write every pending count now (shutdown, tests)."""
        self.write([], everything=True)
