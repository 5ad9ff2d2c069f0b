"""The node's sync service: one MQTT connection at a time, store-and-forward over it.

Per connection (``_session``): subscribe to ``{prefix}/down/{node}/#`` (persistent MQTT 5 session,
so acks and commands sent while we were away are waiting), publish the retained ``online`` birth,
then run the event lane, the snapshot lane, the heartbeat and the downlink dispatcher until the
connection fails. Then everything in flight goes back to ``ready`` and the reconnect loop waits
(see ``edge.sync.mqtt``). The SMS fallback runs for the life of the service.

Central presence: the session also subscribes to ``{prefix}/central/state/+``; while no central is
online the event lane idles, and it resends at once when one comes online (``edge.sync.presence``).

Failures are never silent: every failed attempt updates :attr:`SyncService.health` (shown by
``status`` and in the heartbeat) and is logged as ``sync_connect_failed`` with its cause
(rate-limited: once per cause change, then at most every ``CONNECT_LOG_INTERVAL_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import aiomqtt
from pydantic import BaseModel

from edge import __version__
from edge.clock import Clock
from edge.config import NodeConfig
from edge.errors import WireError, first_leaf
from edge.logs import log_event
from edge.outbox import Outbox, StoredEvent
from edge.signing import MessageSigner
from edge.snapshots import SnapshotStore
from edge.sync.ack_timeout import DEFAULT_BACKOFF, Backoff
from edge.sync.downlink import CommandHandler, CommandProcessor
from edge.sync.health import RateLimitedLog, SyncHealth, classify
from edge.sync.mqtt import Reconnector, TransportError, on_puback, open_client, publish_nowait, session
from edge.sync.presence import CentralPresence
from edge.sync.sms_fallback import SmsFallback
from edge.sync.transport import raise_if_cancelling
from edge.sync.uplink import EventUplink, SnapshotUplink, UplinkStats
from edge.sync.uplink_types import Sent
from edge.sync.wire import (
    P1_CHANNEL,
    Ack,
    Command,
    CommandResult,
    EventEnvelope,
    Heartbeat,
    Presence,
    Topics,
    encode,
)
from edge.sync.wire_decode import decode_on_topic

__all__ = ["CommandHandler", "SyncService"]

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)

RESULT_BACKLOG = 200
CONNECT_LOG_INTERVAL_S = 300.0
#: After connecting, the event lane waits at most this long for central's retained state (it
#: arrives right behind the SUBACK, so normally no wait at all): publishing before knowing
#: whether central is there would put copies on the wire that the "online" resend repeats.
PRESENCE_GRACE_S = 0.25


class _Pub:
    """Adapter: the uplinks publish through whatever client the current session has."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                      retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=qos, retain=retain)
        raise_if_cancelling()

    def publish_nowait(self, topic: str, payload: bytes) -> Sent:
        return publish_nowait(self.client, topic, payload, qos=1)

    def on_confirm(self, callback: Callable[[int], None]) -> None:
        on_puback(self.client, callback)


class SyncService:
    """Store-and-forward sync of one node to central over MQTT."""

    def __init__(self, cfg: NodeConfig, outbox: Outbox, *, snapshots: SnapshotStore | None,
                 clock: Clock, status_provider: Callable[[], dict[str, Any]],
                 command_handler: CommandHandler | None,
                 sms_sender: Callable[[str, str], None] | None = None,
                 sign_event: Callable[[EventEnvelope], EventEnvelope] | None = None,
                 sign_message: MessageSigner | None = None,
                 verify_command: Callable[[Command], None] | None = None,
                 security_event: Callable[[str, dict[str, Any]], None] | None = None,
                 use_central_presence: bool = True, ack_backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.cfg = cfg
        self.node_id = cfg.node.node_id
        self.outbox = outbox
        self.snapshots = snapshots
        #: Signs presence (birth and last will), heartbeats, command results and snapshots with
        #: the node key; central drops them unsigned (docs/protocol.md, "Signatures").
        self.sign_message = sign_message
        self.clock = clock
        self.status_provider = status_provider
        self.topics = Topics(cfg.sync.topic_prefix)
        self.stats = UplinkStats()
        self.connected = False
        self.health = SyncHealth()
        self.presence = CentralPresence(self.topics)
        self.use_central_presence = use_central_presence
        self._connect_log = RateLimitedLog(log, "sync_connect_failed", CONNECT_LOG_INTERVAL_S)
        self._lane_log = RateLimitedLog(log, "sync_session_failed", CONNECT_LOG_INTERVAL_S)
        self.events = EventUplink(
            outbox, clock, node_id=self.node_id, topic=self.topics.up(self.node_id, "event"),
            window=cfg.sync.inflight_window, ack_timeout_s=cfg.sync.ack_timeout_seconds,
            sign_event=sign_event, stats=self.stats, p1_topic=self.topics.up(self.node_id, P1_CHANNEL),
            sign_batches=cfg.sync.sign_batches, backoff=ack_backoff)
        self.snaps = (SnapshotUplink(
            snapshots, node_id=self.node_id, topic=self.topics.up(self.node_id, "snapshot"),
            bytes_per_second=cfg.sync.snapshot_bytes_per_second,
            ack_timeout_s=cfg.sync.ack_timeout_seconds, stats=self.stats,
            sign=sign_message.sign if sign_message is not None else None)
            if snapshots is not None else None)
        self.commands = CommandProcessor(self.node_id, clock, command_handler,
                                         publish_result=self._publish_result,
                                         verify_command=verify_command,
                                         security_event=security_event)
        self.sms = SmsFallback(cfg, outbox, sms_sender, self._sms_cause, clock=clock)
        self.reconnector = Reconnector(cfg.sync)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_lock = threading.Lock()
        self._wake_pending = False
        self._wake_p1 = False
        self._client: aiomqtt.Client | None = None
        self._results: deque[CommandResult] = deque(maxlen=RESULT_BACKLOG)
        self._bg: set[asyncio.Future[Any]] = set()
        self._central_state_head = self.topics.central_state("")
        self._state_seen = asyncio.Event()
        outbox.add_listener(self._on_recorded)

    # ------------------------------------------------------------ wake-ups (any thread)

    def _on_recorded(self, ev: StoredEvent) -> None:
        self.wake(p1=ev.priority == 1)

    def wake(self, p1: bool = False) -> None:
        """A new event was recorded (thread-safe, cheap: coalesced). ``p1`` jumps the backlog."""
        loop = self._loop
        if loop is None:
            return
        with self._wake_lock:
            pending = self._wake_pending
            self._wake_pending = True
            self._wake_p1 = self._wake_p1 or p1
        if not pending or p1:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._deliver_wake)

    def _deliver_wake(self) -> None:
        with self._wake_lock:
            p1 = self._wake_p1
            self._wake_pending = False
            self._wake_p1 = False
        self.events.poke(p1=bool(p1))
        if self.snaps is not None:
            self.snaps.poke()

    # ------------------------------------------------------------ main loop

    async def run(self) -> None:
        """Forever: connect, sync, reconnect. Cancel to stop (in-flight goes back to ready)."""
        self._loop = asyncio.get_running_loop()
        # Any P1 already waiting (e.g. recorded before a restart) jumps the backlog too.
        self.events.poke(p1=True)
        aux = [asyncio.create_task(self.events.ack_writer(), name="sync-acks"),
               asyncio.create_task(self.sms.run(), name="sync-sms")]
        try:
            while True:
                exc: BaseException | None = None
                try:
                    await self._connect_and_sync()
                except (aiomqtt.MqttError, OSError, TransportError) as e:
                    exc = e
                except Exception as e:  # a lane failed: log, treat like a disconnect, go on
                    exc = first_leaf(e)
                    if not isinstance(exc, aiomqtt.MqttError | OSError | TransportError):
                        self._lane_log(type(exc).__name__, node_id=self.node_id, error=repr(exc),
                                       traceback="".join(traceback.format_exception(exc))[-2000:])
                finally:
                    was = self.connected
                    self.connected = False
                    self._client = None
                    await asyncio.shield(self._detach())
                    if was:
                        log_event(log, "sync_disconnected", logging.WARNING, node_id=self.node_id,
                                  error=repr(exc) if exc else None)
                self._failed(exc, was)
                self.reconnector.failed(exc)
                report = await self.reconnector.wait()
                log_event(log, "sync_reconnect_wait", logging.DEBUG, node_id=self.node_id,
                          error=repr(exc), **report)
        finally:
            for t in [*aux, *self._bg]:
                t.cancel()
            self.events.cancel_tasks()
            for t in aux:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            with contextlib.suppress(Exception):
                await self.events.flush_acks()
            self._loop = None

    def _failed(self, exc: BaseException | None, was_connected: bool) -> None:
        """Record (and log, rate-limited) why the session ended or could not start."""
        reason = classify(exc) if exc is not None else "closed"
        detail = str(exc) if exc is not None else "session ended"
        self.health.failures += 1
        self.health.set("retrying", reason, detail or repr(exc))
        if not was_connected:
            self._connect_log(reason, node_id=self.node_id, error=detail[:300],
                              broker=f"{self.cfg.sync.broker_host}:{self.cfg.sync.broker_port}",
                              failures=self.health.failures)

    def _sms_cause(self) -> str | None:
        """Why central may not have the event (for the SMS text)."""
        if not self.connected:
            return "broker"
        if not self.presence.present:
            return "central"
        return "ack"

    def status(self) -> dict[str, Any]:
        """The sync part of the agent's ``status``."""
        return {"connected": self.connected, **self.health.as_dict(),
                "central": self.presence.as_dict(),
                "ack_timeout_s": round(self.events.current_timeout_s, 2),
                "inflight": len(self.events.inflight)}

    async def _detach(self) -> None:
        try:
            await self.events.detach()
            if self.snaps is not None:
                await self.snaps.detach()
        except Exception as exc:
            log_event(log, "sync_release_failed", logging.ERROR, error=repr(exc))

    def _signed(self, msg: _M) -> _M:
        return self.sign_message.sign(msg) if self.sign_message is not None else msg

    def _presence(self, state: str) -> Presence:
        n = self.cfg.node
        return self._signed(Presence(node_id=self.node_id, state=state,
                                     boot_id=self.outbox.boot_id, version=__version__,
                                     at=self.clock.now()[0], kelurahan_code=n.kelurahan_code,
                                     rw=n.rw, rt=n.rt, display_name=n.display_name))

    async def _connect_and_sync(self) -> None:
        # The last will is signed now (``at``: this connect); the broker publishes it later.
        will = encode(self._signed(Presence(node_id=self.node_id, state="offline",
                                            boot_id=self.outbox.boot_id, version=__version__,
                                            at=self.clock.now()[0])))
        presence_topic = self.topics.up(self.node_id, "presence")
        client_obj = open_client(self.cfg.sync, self.node_id, will_topic=presence_topic,
                                 will_payload=will)
        async with session(client_obj) as client:
            self._client = client
            self._state_seen = asyncio.Event()
            if self.use_central_presence:
                # Retained states arrive right behind this SUBACK (after every reconnect too),
                # so they are queued before the second SUBACK below.
                await client.subscribe(self.topics.central_state("+"), qos=1)
            await client.subscribe(f"{self.topics.prefix}/down/{self.node_id}/#", qos=1)
            self.connected = True
            self.health.set("connected")
            self._connect_log.reset()
            self.reconnector.reset()
            self.stats.reconnects += 1
            self.stats.last_connect_mono = time.monotonic()
            log_event(log, "sync_connected", node_id=self.node_id,
                      broker=f"{self.cfg.sync.broker_host}:{self.cfg.sync.broker_port}")
            pub = _Pub(client)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._events_lane(pub), name="sync-events")
                tg.create_task(client.publish(presence_topic, encode(self._presence("online")),
                                              qos=1, retain=True))
                if self.snaps is not None:
                    tg.create_task(self.snaps.run(pub), name="sync-snapshots")
                tg.create_task(self._heartbeats(client), name="sync-heartbeat")
                tg.create_task(self._flush_results(client), name="sync-results")
                tg.create_task(self._downlink(client), name="sync-downlink")

    async def _events_lane(self, pub: _Pub) -> None:
        if self.use_central_presence:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_seen.wait(), PRESENCE_GRACE_S)
        await self.events.run(pub)

    # ------------------------------------------------------------ downlink

    async def _downlink(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode()
            if topic.startswith(self._central_state_head):
                change = self.presence.on_message(topic, bytes(payload))
                self._state_seen.set()
                if change is not None:
                    self.events.set_central(change)
                continue
            if topic.endswith("/cmd"):
                self._spawn(self.commands.on_payload(bytes(payload)))
                continue
            try:
                _node, msg = decode_on_topic(self.topics, topic, bytes(payload))
            except WireError as exc:
                log_event(log, "downlink_malformed", logging.WARNING, node_id=self.node_id,
                          topic=topic, reason=exc.reason, detail=exc.detail)
                continue
            if isinstance(msg, Ack):
                self._on_ack(msg)

    def _on_ack(self, ack: Ack) -> None:
        self.clock.observe_central_time(ack.central_time)
        self.events.on_ack(ack)
        if self.snaps is not None and ack.snapshot_ids:
            ids = self.snaps.on_ack(ack.snapshot_ids)
            self._spawn(self.snaps.commit_acks(ids))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _publish_result(self, result: CommandResult) -> None:
        result = self._signed(result)
        client = self._client
        if client is not None and self.connected:
            try:
                await client.publish(self.topics.up(self.node_id, "cmd_result"), encode(result),
                                     qos=1)
                return
            except aiomqtt.MqttError:
                pass
        self._results.append(result)  # sent after the next connect

    async def _flush_results(self, client: aiomqtt.Client) -> None:
        while self._results:
            result = self._results[0]
            await client.publish(self.topics.up(self.node_id, "cmd_result"), encode(result), qos=1)
            raise_if_cancelling()
            self._results.popleft()

    # ------------------------------------------------------------ heartbeat

    def heartbeat(self) -> Heartbeat:
        counts = self.outbox.counts()
        wall, quality = self.clock.now()
        try:
            siren = dict(self.status_provider())
        except Exception as exc:
            siren = {"error": repr(exc)[:200]}
        return self._signed(Heartbeat(
            node_id=self.node_id, boot_id=self.outbox.boot_id, at=wall, version=__version__,
            time_quality=quality,
            clock_offset=self.clock.offset,
            outbox={k: int(v) for k, v in counts.items() if isinstance(v, int)},
            siren=siren,
            extra={"published": self.stats.published, "acked": self.stats.acked,
                   "requeued": self.stats.requeued, "reconnects": self.stats.reconnects,
                   "central_present": self.presence.present}))

    async def _heartbeats(self, client: aiomqtt.Client) -> None:
        topic = self.topics.up(self.node_id, "heartbeat")
        while True:
            hb = await asyncio.to_thread(self.heartbeat)
            await client.publish(topic, encode(hb), qos=0)
            raise_if_cancelling()
            await asyncio.sleep(self.cfg.sync.heartbeat_seconds)
