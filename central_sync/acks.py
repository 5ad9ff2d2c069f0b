"""Central's outgoing acknowledgements: end-to-end ``Ack`` messages to the nodes, and the MQTT
PUBACKs of the broker's deliveries to central (manual acknowledgement).

``AckBook`` collects, during one commit batch, what each node is told: committed and duplicate
event ids, permanent rejections (with reasons) and stored snapshot ids. ``publish_all`` then
sends ONE ``Ack`` per node (split only past the wire limit of 5,000 ids) with paho's
``publish`` called directly: no asyncio future, Task or aiomqtt pending-call entry per Ack (the
profile of issue 8 put a third of central's CPU there). An Ack is fire-and-forget QoS 1: paho
retries it while the connection lives; if it is lost the node resends the events and gets the
duplicates acknowledged again.

``Link`` is one live broker connection. A ``Delivery`` (link, mid, qos) is the broker's copy of
one message to central; with paho's ``manual_ack`` central answers the PUBACK only once the
message is handled (committed, coalesced into a written node update, or rejected). The broker
holds at most ``ReceiveMaximum`` unacknowledged QoS 1 deliveries, so that is the bound on what
central has in memory: backpressure reaches the broker instead of growing a queue (aiomqtt
would otherwise buffer without limit, or discard past its limit after paho had acknowledged).
A delivery from a connection that has since dropped is not acknowledged: the broker redelivers
it on the next session, and it is a duplicate then.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from edge.errors import WireError
from edge.logs import log_event
from edge.sync.wire import Ack, Rejection, Topics, encode

log = logging.getLogger("central_sync.acks")

#: Most ids of one kind in one Ack (``edge.sync.wire.Ack``'s limits).
ACK_IDS_MAX = 5000
ACK_SNAPSHOTS_MAX = 1000


class AckWindow:
    """Bounds the QoS 1 Acks not yet confirmed by the broker. paho keeps every QoS 1 publish past
    its in-flight limit in an unbounded queue and rescans it on each PUBACK; under overload that
    queue (and the cost of each PUBACK) would grow without end. Past ``size`` unconfirmed Acks,
    an Ack goes at QoS 0 instead: a lost one only makes the post resend, and the duplicate is
    acknowledged again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._infos: deque[paho.MQTTMessageInfo] = deque()

    def qos(self) -> int:
        while self._infos and self._infos[0].is_published():
            self._infos.popleft()
        return 1 if len(self._infos) < self.size else 0

    def sent(self, info: paho.MQTTMessageInfo, qos: int) -> None:
        if qos == 1:
            self._infos.append(info)


class AckBook:
    """What to tell each node after one commit batch."""

    def __init__(self) -> None:
        self._nodes: dict[str, _NodeAck] = {}

    def __bool__(self) -> bool:
        return bool(self._nodes)

    def _of(self, node_id: str) -> _NodeAck:
        found = self._nodes.get(node_id)
        if found is None:
            found = self._nodes[node_id] = _NodeAck()
        return found

    def stored(self, node_id: str, event_id: str) -> None:
        self._of(node_id).event_ids.append(event_id)

    def reject(self, node_id: str, event_id: str, reason: str) -> None:
        self._of(node_id).rejected.append(Rejection(event_id=event_id, reason=reason[:200]))

    def snapshot(self, node_id: str, snapshot_id: str) -> None:
        self._of(node_id).snapshot_ids.append(snapshot_id)

    def bodies(self, central_time: float) -> list[tuple[str, int, bytes]]:
        """(node id, event ids acknowledged, JSON body) per Ack: the bytes ``encode(Ack(...))``
        writes, built without a pydantic model per Ack (every id and reason was validated when
        it arrived)."""
        out: list[tuple[str, int, bytes]] = []
        encode_json = _ACK_JSON.encode
        for node_id, ids, rejected, snapshot_ids in self._rounds():
            body = encode_json({"central_time": central_time, "event_ids": ids, "kind": "ack", "node_id": node_id,
                                "rejected": [{"event_id": r.event_id, "reason": r.reason} for r in rejected],
                                "snapshot_ids": snapshot_ids, "v": 1})  # written in sorted key order
            out.append((node_id, len(ids), body.encode()))
        return out

    def acks(self, central_time: float) -> list[Ack]:
        return [Ack.model_construct(v=1, sig=None, kind="ack", node_id=node_id, central_time=central_time,
                                    event_ids=ids, rejected=rejected, snapshot_ids=snapshot_ids)
                for node_id, ids, rejected, snapshot_ids in self._rounds()]

    def _rounds(self) -> Iterator[tuple[str, list[str], list[Rejection], list[str]]]:
        """(node id, event ids, rejections, snapshot ids) of each Ack, split past the wire limits."""
        for node_id, n in self._nodes.items():
            ids = n.event_ids if len(n.event_ids) < 2 else list(dict.fromkeys(n.event_ids))
            if len(ids) <= ACK_IDS_MAX and len(n.rejected) <= ACK_IDS_MAX and len(n.snapshot_ids) <= ACK_SNAPSHOTS_MAX:
                yield node_id, ids, n.rejected, n.snapshot_ids
                continue
            rounds = max(-(-len(ids) // ACK_IDS_MAX), -(-len(n.rejected) // ACK_IDS_MAX),
                         -(-len(n.snapshot_ids) // ACK_SNAPSHOTS_MAX))
            for r in range(rounds):
                yield (node_id, ids[r * ACK_IDS_MAX:(r + 1) * ACK_IDS_MAX],
                       n.rejected[r * ACK_IDS_MAX:(r + 1) * ACK_IDS_MAX],
                       n.snapshot_ids[r * ACK_SNAPSHOTS_MAX:(r + 1) * ACK_SNAPSHOTS_MAX])


#: The compact JSON ``encode(Ack)`` writes (keys in sorted order, as the literal above lists
#: them), without building an encoder per Ack or sorting keys.
_ACK_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


@dataclass(eq=False)
class Link:
    """One broker connection of ingest (``alive`` until it drops)."""

    client_id: str
    paho: paho.Client
    window: AckWindow
    alive: bool = True

    def flush(self) -> None:
        """Write what is queued on this connection now (the Acks and PUBACKs of one commit batch)
        in as few TCP segments as possible: paho sends each packet with its own ``send``, and with
        ``TCP_NODELAY`` every one of them would be a segment of its own, pushed through the TCP
        stack (on loopback: the broker's receive path too) one by one. ``TCP_CORK`` (Linux) holds
        them until it is cleared, here right after, so nothing waits on a timer. Elsewhere, or on
        any socket error, paho writes them as before (its writer stays registered)."""
        if not self.alive or not self.paho.want_write():
            return
        sock = self.paho.socket()
        if _CORK is None or not isinstance(sock, socket.socket):
            self.paho.loop_write()
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        except OSError:
            return  # a broken socket: paho's own writer or reader meets the error
        try:
            self.paho.loop_write()
        finally:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, _CORK, 0)


def flush_links(links: set[Link]) -> None:
    """``Link.flush`` each of ``links``. Schedule it with ``loop.call_soon`` after queueing the
    packets, never call it right away: aiomqtt registers paho's socket writer with
    ``call_soon_threadsafe``, so a write done before that runs would leave a writer registered
    that paho believes removed (it would then fire on every loop iteration)."""
    for link in links:
        link.flush()


#: Linux's ``TCP_CORK`` (None where the platform has none).
_CORK: int | None = getattr(socket, "TCP_CORK", None)


@dataclass(slots=True, eq=False)
class Delivery:
    """Not ``frozen``: a frozen dataclass sets each field through ``object.__setattr__`` (1.2 us
    per construction against 0.4 us here), and one is built for every message; nothing assigns
    its fields after construction."""

    link: Link
    mid: int
    qos: int

    def puback(self) -> bool:
        """Acknowledge this delivery to the broker (no-op for QoS 0 or a dropped link)."""
        if self.qos == 0 or not self.link.alive:
            return False
        self.link.paho.ack(self.mid, self.qos)
        return True


@dataclass
class _NodeAck:
    event_ids: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    snapshot_ids: list[str] = field(default_factory=list)


@dataclass
class AckCounters:
    published: int = 0
    unsent: int = 0
    event_ids: int = 0
    qos0: int = 0  # Acks sent at QoS 0 because the QoS 1 window was full


def publish_all(book: AckBook, link: Link | None, topics: Topics, central_time: float,
                counters: AckCounters) -> None:
    """Publish one Ack per node of ``book`` on ``link`` (QoS 1 within the link's ``AckWindow``,
    no future per call)."""
    try:
        bodies = book.bodies(central_time)
    except UnicodeEncodeError as exc:  # ids were checked when they arrived: a bug, not input
        log_event(log, "ack_not_encoded", logging.ERROR, error=str(exc)[:200])
        bodies = [(a.node_id, len(a.event_ids), encode(a)) for a in book.acks(central_time)
                  if _encodable(a)]
    for node_id, n_ids, body in bodies:
        counters.event_ids += n_ids
        if link is None or not link.alive:
            counters.unsent += 1
            continue
        qos = link.window.qos()
        info = link.paho.publish(topics.down(node_id, "ack"), body, qos=qos)
        link.window.sent(info, qos)
        counters.qos0 += 1 - qos
        if info.rc == paho.MQTT_ERR_SUCCESS:
            counters.published += 1
        else:
            counters.unsent += 1


def _encodable(ack: Ack) -> bool:
    try:
        encode(ack)
    except (WireError, UnicodeEncodeError):
        return False
    return True
