"""One commit batch of ingest, written in a worker thread (``BatchWriter.write``).

Order inside a batch: refresh the key cache (revocations bite), verify every envelope over its
received bytes (``GoodEnvelope.received``, else ``canonical()``), or, for a signed
``event_batch`` (``EventMsg.batch``) when the verifier can (``verify_batch``), the batch's one
signature for all its envelopes (refused whole when it fails), ``store.commit_events`` (one
transaction; the store rejects only the rows it cannot hold), the place each presence claims compared with the registry
(``central_sync.place_check``: a disagreement is a security event, never applied), the coalesced
presence/heartbeat state (``store.apply_node_updates``, one transaction), snapshots and command
results. The outcome says what each node is told; nothing
is acknowledged by this module. ``write`` is idempotent, so a transient store error retries the
whole batch (already committed events come back as duplicates and are acknowledged then).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from central_sync.acks import Delivery
from central_sync.ingest_decode import BatchSig, GoodEnvelope
from central_sync.place_check import PlaceCheck
from central_sync.store import Store
from edge.errors import SecurityError
from edge.logs import log_event
from edge.sync.wire import CommandResult, EventEnvelope, Heartbeat, Presence, SnapshotEnvelope

log = logging.getLogger("central_sync.ingest")
#: An envelope already counted as rejected (internal error): skipped without a second row.
_SKIP = SecurityError("internal", "batch verification failed")


class BatchVerifier(Protocol):
    """What ingest needs from event verification (``CachedEventVerifier`` is one)."""

    def refresh(self) -> None: ...

    def verify(self, env: EventEnvelope, canonical: Callable[[], bytes | None],
               received: bytes | None = None) -> None: ...

    def verify_batch(self, node_id: str, batch: BatchSig,
                     envs: list[GoodEnvelope]) -> list[SecurityError | None] | None:
        """A signed batch checked with its one signature: per envelope None (acceptable) or its
        rejection; raises ``SecurityError`` when the whole batch is refused; returns None when
        this verifier checks envelopes one by one (then ``verify`` is called per envelope)."""
        ...


class CallableVerifier:
    """A plain ``verify(env)`` callable (tests, simple hooks) as a ``BatchVerifier``."""

    def __init__(self, fn: Callable[[EventEnvelope], None]) -> None:
        self._fn = fn

    def refresh(self) -> None:
        return None

    def verify(self, env: EventEnvelope, canonical: Callable[[], bytes | None],
               received: bytes | None = None) -> None:
        self._fn(env)

    def verify_batch(self, node_id: str, batch: BatchSig,
                     envs: list[GoodEnvelope]) -> list[SecurityError | None] | None:
        return None  # the hook checks every envelope on its own


def as_batch_verifier(hook: BatchVerifier | Callable[[EventEnvelope], None] | None) -> BatchVerifier | None:
    if hook is None:
        return None
    if isinstance(hook, CallableVerifier) or all(hasattr(hook, m) for m in ("refresh", "verify", "verify_batch")):
        return cast(BatchVerifier, hook)
    return CallableVerifier(cast(Callable[[EventEnvelope], None], hook))


@dataclass(slots=True)
class EventMsg:
    """The good envelopes of one received event message, settled together."""

    topic: str
    node_id: str
    envs: list[GoodEnvelope]
    delivery: Delivery | None
    batch: BatchSig | None = None  # a signed event_batch: its one signature covers ``envs``


@dataclass
class Batch:
    events: list[EventMsg]
    presences: list[Presence]
    heartbeats: list[Heartbeat]
    snapshots: list[SnapshotEnvelope]
    results: list[CommandResult]


@dataclass(frozen=True, slots=True)
class RowRejection:
    topic: str
    node_id: str
    reason: str
    detail: str
    event_id: str | None  # named in the node's Ack (permanent) when set


@dataclass
class BatchOutcome:
    stored: list[tuple[str, str]] = field(default_factory=list)  # (node, event id): new or duplicate
    rejections: list[RowRejection] = field(default_factory=list)
    snapshots: list[tuple[str, str]] = field(default_factory=list)  # (node, snapshot id)
    inserted: int = 0
    duplicates: int = 0
    updates: int = 0
    place_mismatches: int = 0  # presences claiming another place than the registry's


class BatchWriter:
    def __init__(self, store: Store, verifier: BatchVerifier | None,
                 on_events: Callable[[list[dict[str, Any]]], None] | None,
                 place_check: PlaceCheck | None = None) -> None:
        self.store = store
        self.verifier = verifier
        self.on_events = on_events
        self.place_check = place_check if place_check is not None else PlaceCheck(store.registry_tables())

    def write(self, batch: Batch) -> BatchOutcome:
        out = BatchOutcome()
        now = time.time()
        good: list[EventEnvelope] = []
        # Event ids are unique per post only: two posts may send the same id in one batch, and
        # each must get its own Ack. The store reports ids in input order, so the owners of an
        # id are taken in that order.
        owners: dict[str, list[EventMsg]] = {}
        if self.verifier is not None and batch.events:
            self.verifier.refresh()
        for msg in batch.events:
            checked = self._verify_batch(msg, out) if msg.batch is not None else None
            for i, g in enumerate(msg.envs):
                if checked is not None:
                    problem = checked[i]
                    if problem is _SKIP:
                        continue
                    if problem is not None:
                        out.rejections.append(RowRejection(msg.topic, msg.node_id, problem.reason, problem.detail,
                                                           g.env.event_id))
                        continue
                elif self.verifier is not None:
                    try:
                        self.verifier.verify(g.env, g.canonical, g.received)
                    except SecurityError as exc:
                        out.rejections.append(RowRejection(msg.topic, msg.node_id, exc.reason, exc.detail,
                                                           g.env.event_id))
                        continue
                    except Exception as exc:  # not the sender's fault: it resends later
                        out.rejections.append(RowRejection(msg.topic, msg.node_id, "internal",
                                                           f"verify: {type(exc).__name__}: {exc}", None))
                        continue
                good.append(g.env)
                owners.setdefault(g.env.event_id, []).append(msg)
        if good:
            result = self.store.commit_events(good, now)
            def owner(event_id: str) -> EventMsg:
                msgs = owners[event_id]
                return msgs.pop(0) if len(msgs) > 1 else msgs[0]

            out.stored = [(owner(i).node_id, i) for i in (*result.inserted, *result.duplicates)]
            new = out.stored[:len(result.inserted)]
            for row in result.rejected:
                msg = owner(row.event_id)
                out.rejections.append(RowRejection(msg.topic, msg.node_id, row.reason, row.detail,
                                                   None if row.reason == "internal" else row.event_id))
            out.inserted, out.duplicates = len(result.inserted), len(result.duplicates)
            if result.inserted and self.on_events is not None:
                try:
                    self.on_events(self._new_rows(new))
                except Exception:
                    log.exception("on_events_failed")
        if batch.presences:
            out.place_mismatches = self.place_check.write(batch.presences)
        if batch.presences or batch.heartbeats:
            self.store.apply_node_updates(batch.presences, batch.heartbeats, now)
            out.updates += len(batch.presences) + len(batch.heartbeats)
        for snap in batch.snapshots:
            self.store.insert_snapshot(snap, now)
            out.snapshots.append((snap.node_id, snap.snapshot_id))
        if batch.results:
            self.store.record_command_results(batch.results, now)
        for res in batch.results:
            out.updates += 1
            log_event(log, "command_result", node_id=res.node_id, command_id=res.command_id, ok=res.ok)
        return out

    def _verify_batch(self, msg: EventMsg, out: BatchOutcome) -> list[SecurityError | None] | None:
        """Per envelope of a signed batch: None (acceptable) or its rejection, from the verifier's
        ``verify_batch`` (one signature for the batch); every envelope rejected when the batch
        is; None when the verifier checks envelopes one by one (no ``verify_batch``)."""
        if self.verifier is None or msg.batch is None:
            return None
        try:
            return self.verifier.verify_batch(msg.node_id, msg.batch, msg.envs)
        except SecurityError as exc:
            return [exc] * len(msg.envs)
        except Exception as exc:  # not the sender's fault: it resends later
            for _g in msg.envs:
                out.rejections.append(RowRejection(msg.topic, msg.node_id, "internal",
                                                   f"verify: {type(exc).__name__}: {exc}", None))
            return [_SKIP] * len(msg.envs)

    def _new_rows(self, inserted: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The stored rows of a batch's new events ((post, event id) pairs), read per post (event
        ids are unique per post only, and the stores index them with the post), in arrival order."""
        per_node: dict[str, list[str]] = {}
        for node_id, event_id in inserted:
            per_node.setdefault(node_id, []).append(event_id)
        rows = [r for node, ids in per_node.items() for r in self.store.get_events(ids, node)]
        rows.sort(key=lambda r: r["rowid"])
        return rows
