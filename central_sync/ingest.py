"""Central ingest: store-and-forward sync, central side.

Every uplink message goes through ``IngestService.handle_message(topic, payload)``:

* ``event``: one ``EventEnvelope`` or an ``event_batch`` of them, decoded, checked against its
  topic (each envelope of a batch validated on its own: a bad one is rejected, the others are
  queued), queued for the next batch. A batch (up to
  ``ingest.batch_max`` events or ``ingest.batch_wait_ms``) is verified (``verify_event``), inserted
  in ONE transaction in a worker thread, and only THEN one ``Ack`` per node is published to
  ``{prefix}/down/{node}/ack`` (QoS 1) naming new and duplicate event ids (duplicates are acked
  again: the node resends whatever it has no Ack for) and the permanently rejected ids with their
  reasons, so the node stops resending them.
* ``snapshot``: stored (BLOB), then acked by ``snapshot_ids``.
* ``presence`` / ``heartbeat`` / ``cmd_result``: update the store.

Anything malformed, oversized, of an unknown version or kind, on the wrong topic (an envelope
whose node id is not the topic's), or raising while handled is rejected: counted in
``stats.rejected`` by reason, recorded with ``store.record_rejection`` and logged as one
structured line. The service never crashes on input. A batch whose commit fails is not acked
(the nodes resend it); locked/busy databases are retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiomqtt

from central_sync.config import CentralConfig
from central_sync.errors import CentralError
from central_sync.mqtt_central import (
    Backoff,
    central_presence,
    make_client,
    next_messages,
    subscriptions,
    worker_client_ids,
)
from central_sync.snapshot_policy import check_snapshot_envelope
from central_sync.store import Store, is_transient
from edge.errors import SecurityError, WireError
from edge.logs import log_event
from edge.sync.wire import (
    Ack,
    Command,
    CommandResult,
    EventEnvelope,
    Heartbeat,
    Presence,
    Rejection,
    SnapshotEnvelope,
    Topics,
    decode_event_message,
    decode_on_topic,
    encode,
)

log = logging.getLogger("central_sync.ingest")

#: Wire reasons after which resending the same bytes can never succeed.
_PERMANENT_WIRE_REASONS = frozenset({"bad_field"})
#: The same for one envelope inside a batch (its event id is known, the rest of the batch is fine).
_PERMANENT_ENVELOPE_REASONS = frozenset({"bad_field", "oversized"})
#: Messages taken from the client's buffer per wake-up.
_READ_BURST = 1000


@dataclass
class IngestStats:
    """Counters of one ``IngestService`` (read from any thread; written on its loop)."""

    received: int = 0  # messages
    event_batches: int = 0  # well-formed event_batch messages among them
    batched_events: int = 0  # envelopes inside those (each is inserted, a duplicate or rejected)
    inserted: int = 0
    duplicates: int = 0
    acked: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    snapshots: int = 0
    updates: int = 0
    acks_published: int = 0
    acks_unsent: int = 0
    store_retries: int = 0

    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def outcomes_expected(self) -> int:
        """How many outcomes (inserted + duplicates + rejected + snapshots + updates) the received
        messages account for once flushed: one per message, one per envelope of a batch."""
        return self.received - self.event_batches + self.batched_events

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}


@dataclass
class _Pending:
    env: EventEnvelope
    topic: str


@dataclass
class _BatchResult:
    new: list[str]
    dup: list[str]
    rejected: list[tuple[EventEnvelope, str, str, bool]]  # env, reason, detail, permanent
    rows: list[dict[str, Any]]


class IngestService:
    """Subscribes to the uplink tree, stores what arrives, acknowledges after commit.

    ``verify_event`` raises ``edge.errors.SecurityError`` to reject an event (permanently);
    ``sign_command`` returns the signed command; ``on_events(rows)`` is called from a worker
    thread after each committed batch with the NEW rows (as ``CentralStore.list_events`` returns
    them) and may raise without harming ingest. ``client_id`` overrides ``cfg.broker.client_id``.
    """

    def __init__(
        self,
        cfg: CentralConfig,
        store: Store,
        *,
        verify_event: Callable[[EventEnvelope], None] | None = None,
        sign_command: Callable[[Command], Command] | None = None,
        on_events: Callable[[list[dict[str, Any]]], None] | None = None,
        client_id: str | None = None,
    ) -> None:
        if client_id is not None:
            cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(update={"client_id": client_id})})
        self.cfg = cfg
        self.store = store
        self.verify_event = verify_event
        self.sign_command = sign_command
        self.on_events = on_events
        self.topics = Topics(cfg.topic_prefix)
        self.stats = IngestStats()
        self.connected = asyncio.Event()
        self._clients: dict[str, aiomqtt.Client] = {}
        self._pending: list[_Pending] = []
        self._pending_rejects: dict[str, list[Rejection]] = {}
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._commit_lock = asyncio.Lock()
        self._ack_tasks: set[asyncio.Task[None]] = set()

    # -- running ---------------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, subscribe and ingest forever (reconnecting with backoff); cancel to stop."""
        batcher = asyncio.create_task(self._batcher(), name="ingest-batcher")
        try:
            await asyncio.gather(*(self._connection_loop(cid) for cid in worker_client_ids(self.cfg)))
        finally:
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
            with contextlib.suppress(Exception):
                await asyncio.shield(self.flush())
            for task in list(self._ack_tasks):
                task.cancel()

    async def _connection_loop(self, client_id: str) -> None:
        backoff = Backoff(self.cfg.broker.reconnect_min_seconds, self.cfg.broker.reconnect_max_seconds)
        while True:
            try:
                client, buffer = make_client(self.cfg, client_id)
                async with client:
                    granted = await client.subscribe(subscriptions(self.cfg))
                    refused = [str(rc) for rc in granted if getattr(rc, "is_failure", False)]
                    if refused:  # e.g. an ACL that does not grant central the uplink tree
                        log_event(log, "subscription_refused", logging.ERROR, client_id=client_id, reasons=refused)
                    self._clients[client_id] = client
                    self.connected.set()
                    backoff.reset()
                    log_event(log, "central_connected", client_id=client_id, host=self.cfg.broker.host,
                              port=self.cfg.broker.port)
                    # Retained "online" now that we are subscribed (posts resend at once), "offline" on exit.
                    async with central_presence(client, self.cfg, client_id):
                        while True:
                            for message in await next_messages(client, buffer, _READ_BURST):
                                payload = message.payload
                                raw = isinstance(payload, bytes | bytearray)
                                body = payload if raw else str(payload or "").encode()
                                await self.handle_message(message.topic.value, bytes(body))
            except aiomqtt.MqttError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # Stopping: aiomqtt's disconnect on the way out raised MqttError over our
                    # CancelledError; swallowing it here would reconnect forever.
                    raise asyncio.CancelledError from exc
                log_event(log, "central_disconnected", logging.WARNING, client_id=client_id, error=str(exc)[:200])
            finally:
                self._clients.pop(client_id, None)
                if not self._clients:
                    self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    def _client(self) -> aiomqtt.Client | None:
        for client in self._clients.values():
            return client
        return None

    # -- per message -----------------------------------------------------------------------------
    async def handle_message(self, topic: str, payload: bytes) -> None:
        """Handle one uplink message; never raises for bad input (it is rejected instead)."""
        self.stats.received += 1
        try:
            direction, _node, channel = self.topics.parse(topic)
            if direction != "up":
                raise WireError("wrong_topic", f"not an uplink topic: {topic[:120]}")
            if channel == "event":
                await self._handle_events(topic, payload)
                return
            node_id, msg = decode_on_topic(self.topics, topic, payload)
            if isinstance(msg, SnapshotEnvelope):
                await self._handle_snapshot(msg)
            elif isinstance(msg, Presence):
                await self._with_store(self.store.upsert_presence, msg, time.time())
            elif isinstance(msg, Heartbeat):
                await self._with_store(self.store.upsert_heartbeat, msg, time.time())
            elif isinstance(msg, CommandResult):
                await self._with_store(self.store.record_command_result, msg, time.time())
                log_event(log, "command_result", node_id=node_id, command_id=msg.command_id, ok=msg.ok)
            else:  # pragma: no cover - decode_on_topic only yields uplink kinds on uplink topics
                raise WireError("wrong_kind", type(msg).__name__)
            if not isinstance(msg, EventEnvelope | SnapshotEnvelope):
                self.stats.updates += 1
        except WireError as exc:
            await self._reject(topic, exc.reason, exc.detail, payload=payload,
                               permanent=exc.reason in _PERMANENT_WIRE_REASONS)
        except SecurityError as exc:
            await self._reject(topic, exc.reason, exc.detail, payload=payload, permanent=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._reject(topic, "internal_error", f"{type(exc).__name__}: {exc}"[:300], payload=payload)

    async def _handle_events(self, topic: str, payload: bytes) -> None:
        """Queue the envelopes of one event message; reject the bad envelopes of a batch one by
        one (a malformed message as a whole raises ``WireError``)."""
        node_id, envs, bad, is_batch = decode_event_message(self.topics, topic, payload)
        if is_batch:
            self.stats.event_batches += 1
            self.stats.batched_events += len(envs) + len(bad)
        if envs:
            await self._room.wait()
            self._pending.extend([_Pending(env, topic) for env in envs])
            if len(self._pending) >= self.cfg.ingest.max_pending_events:
                self._room.clear()
            self._wake.set()
        for b in bad:
            await self._reject(topic, b.reason, f"events[{b.index}]: {b.detail}",
                               permanent=b.reason in _PERMANENT_ENVELOPE_REASONS, node_id=node_id,
                               event_id=b.event_id)

    async def _handle_snapshot(self, env: SnapshotEnvelope) -> None:
        check_snapshot_envelope(env)  # images or nothing (SecurityError -> counted rejection)
        await self._with_store(self.store.insert_snapshot, env, time.time())
        self.stats.snapshots += 1
        ack = Ack(node_id=env.node_id, snapshot_ids=[env.snapshot_id], central_time=time.time())
        await self._publish_ack(ack)
        log_event(log, "snapshot_stored", node_id=env.node_id, snapshot_id=env.snapshot_id, event_id=env.event_id)

    def _topic_node(self, topic: str) -> str | None:
        try:
            return self.topics.parse(topic)[1]
        except WireError:
            return None

    async def _reject(self, topic: str, reason: str, detail: str, *, payload: bytes | None = None,
                      permanent: bool = False, node_id: str | None = None, event_id: str | None = None) -> None:
        """Count, record and log one rejected message; queue a rejection Ack when permanent."""
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        node_id = node_id or self._topic_node(topic)
        if event_id is None and payload is not None and permanent:
            event_id = _event_id_of(payload, node_id)
        log_event(log, "message_rejected", logging.WARNING, node_id=node_id or "-", event_id=event_id,
                  topic=topic[:200], reason=reason, detail=detail[:300])
        try:
            await self._with_store(self.store.record_rejection, node_id=node_id, topic=topic, reason=reason,
                                   detail=detail, at=time.time())
        except Exception as exc:  # the rejection is already counted and logged
            log_event(log, "rejection_not_recorded", logging.ERROR, node_id=node_id or "-", error=str(exc)[:200])
        if permanent and event_id and node_id:
            self._pending_rejects.setdefault(node_id, []).append(Rejection(event_id=event_id, reason=reason[:200]))
            self._wake.set()

    # -- batching --------------------------------------------------------------------------------
    async def _batcher(self) -> None:
        wait_s = self.cfg.ingest.batch_wait_ms / 1000
        while True:
            await self._wake.wait()
            if wait_s > 0 and len(self._pending) < self.cfg.ingest.batch_max:
                deadline = asyncio.get_running_loop().time() + wait_s
                while len(self._pending) < self.cfg.ingest.batch_max:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), left)
            await self._commit_once()

    async def flush(self) -> None:
        """Commit and acknowledge everything queued so far (``run()`` does this by itself)."""
        while self._pending or self._pending_rejects:
            await self._commit_once()

    async def _commit_once(self) -> None:
        async with self._commit_lock:
            batch = self._pending[: self.cfg.ingest.batch_max]
            del self._pending[: len(batch)]
            if len(self._pending) < self.cfg.ingest.max_pending_events:
                self._room.set()
            if not self._pending and not self._pending_rejects:
                self._wake.clear()
            rejects, self._pending_rejects = self._pending_rejects, {}
            if not batch and not rejects:
                return
            try:
                result = await self._with_store(self._commit_sync, [p.env for p in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Not acked: every node resends what it has no Ack for.
                self.stats.rejected["store_error"] = self.stats.rejected.get("store_error", 0) + len(batch)
                log_event(log, "batch_not_committed", logging.ERROR, size=len(batch), error=str(exc)[:300])
                for node, items in rejects.items():
                    self._pending_rejects.setdefault(node, []).extend(items)
                await asyncio.sleep(0.5)
                return
            self.stats.batches += 1 if batch else 0
            self.stats.inserted += len(result.new)
            self.stats.duplicates += len(result.dup)
            for env, reason, detail, permanent in result.rejected:
                await self._reject(f"{self.topics.prefix}/up/{env.node_id}/event", reason, detail,
                                   permanent=permanent, node_id=env.node_id, event_id=env.event_id)
            rejects = {**rejects}
            for node, items in self._pending_rejects.items():
                rejects.setdefault(node, []).extend(items)
            self._pending_rejects = {}
            await self._ack_batch(batch, result, rejects)

    def _commit_sync(self, envs: list[EventEnvelope]) -> _BatchResult:
        """Verify and insert a batch in one transaction (runs in a worker thread)."""
        good: list[EventEnvelope] = []
        rejected: list[tuple[EventEnvelope, str, str, bool]] = []
        for env in envs:
            if self.verify_event is not None:
                try:
                    self.verify_event(env)
                except SecurityError as exc:
                    rejected.append((env, exc.reason, exc.detail, True))
                    continue
                except Exception as exc:
                    rejected.append((env, "verify_error", f"{type(exc).__name__}: {exc}"[:300], False))
                    continue
            good.append(env)
        new, dup = self.store.insert_events(good, time.time()) if good else ([], [])
        rows: list[dict[str, Any]] = []
        if new and self.on_events is not None:
            rows = self.store.get_events(new)
            try:
                self.on_events(rows)
            except Exception:
                log.exception("on_events_failed")
        return _BatchResult(new, dup, rejected, rows)

    async def _ack_batch(self, batch: list[_Pending], result: _BatchResult,
                         rejects: dict[str, list[Rejection]]) -> None:
        stored = set(result.new) | set(result.dup)
        by_node: dict[str, list[str]] = {}
        for p in batch:
            if p.env.event_id in stored:
                by_node.setdefault(p.env.node_id, []).append(p.env.event_id)
        now = time.time()
        for node in sorted(set(by_node) | set(rejects)):
            ids = list(dict.fromkeys(by_node.get(node, [])))
            rej = rejects.get(node, [])
            for i in range(0, max(len(ids), len(rej), 1), 5000):
                ack = Ack(node_id=node, event_ids=ids[i:i + 5000], rejected=rej[i:i + 5000], central_time=now)
                self.stats.acked += len(ack.event_ids)
                self._spawn_ack(ack)

    # -- publishing ------------------------------------------------------------------------------
    def _spawn_ack(self, ack: Ack) -> None:
        task = asyncio.get_running_loop().create_task(self._publish_ack(ack))
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def _publish_ack(self, ack: Ack) -> None:
        client = self._client()
        if client is None:
            self.stats.acks_unsent += 1
            log_event(log, "ack_not_sent", logging.WARNING, node_id=ack.node_id, reason="not connected",
                      events=len(ack.event_ids))
            return
        try:
            await client.publish(self.topics.down(ack.node_id, "ack"), encode(ack), qos=1)
        except aiomqtt.MqttError as exc:
            # The node resends the events; the duplicates are acked again then.
            self.stats.acks_unsent += 1
            log_event(log, "ack_not_sent", logging.WARNING, node_id=ack.node_id, reason=str(exc)[:200],
                      events=len(ack.event_ids))
            return
        self.stats.acks_published += 1

    async def send_command(self, cmd: Command, *, issued_by: str) -> None:
        """Sign (if configured), record and publish a command (QoS 1); ``CentralError`` if offline."""
        client = self._client()
        if client is None:
            raise CentralError(f"cannot send command {cmd.command_id}: not connected to the broker")
        if self.sign_command is not None:
            cmd = self.sign_command(cmd)
        try:
            body = encode(cmd)
        except WireError as exc:
            raise CentralError(f"command {cmd.command_id} is invalid: {exc}") from None
        await self._with_store(self.store.record_command, cmd, issued_by=issued_by)
        try:
            await client.publish(self.topics.down(cmd.node_id, "cmd"), body, qos=1)
        except aiomqtt.MqttError as exc:
            raise CentralError(f"command {cmd.command_id} not published: {exc}") from None
        log_event(log, "command_published", node_id=cmd.node_id, command_id=cmd.command_id, action=cmd.action,
                  issued_by=issued_by)

    # -- store access ----------------------------------------------------------------------------
    async def _with_store(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a store call in a thread, retrying locked/busy errors with capped backoff."""
        backoff = Backoff(0.05, self.cfg.ingest.db_retry_max_seconds)
        while True:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats.store_retries += 1
                delay = backoff.next_delay()
                log_event(log, "store_busy_retry", logging.WARNING, error=str(exc)[:200], delay_s=round(delay, 3))
                await asyncio.sleep(delay)


def _event_id_of(payload: bytes, topic_node: str | None) -> str | None:
    """The event id of a rejected event envelope, when it can be trusted to name the topic's node."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or data.get("kind") != "event":
        return None
    event_id, node = data.get("event_id"), data.get("node_id")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 64 or node != topic_node:
        return None
    return event_id
