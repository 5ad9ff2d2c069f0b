"""Stale subscriptions in central's resumed MQTT 5 sessions, found by Subscription Identifiers.

Central's connections resume a persistent session (``clean_start=False``, fixed client id). A
resumed session keeps EVERY subscription it ever had: when the subscription set changed between
two runs of the same client id (another ``ingest.shared_group``, or no group -> a group, or the
reverse) and the process reconnects before the old session expired, the old filters are still
there, and the broker delivers each message once per matching subscription (Mosquitto 2.0:
measured, one copy per subscription). Ingest is idempotent, so nothing is stored twice, but
central does all its work twice, and an old non-shared filter gives a worker the whole fleet.

MQTT has no way to list a session's subscriptions, so central subscribes with a Subscription
Identifier derived from the set (``subscription_id``: a stable hash of the sorted filters and
their options). Every delivery carries the identifiers of the subscriptions that matched it
(paho: ``message.properties.SubscriptionIdentifier``, a list); one that does not carry exactly
``[ours]`` came from a subscription this process did not make (none: made by a version before
this one; another: an older configuration). ``SessionGuard.check`` sees that, the message is
still handled normally (idempotent, nothing lost), the delivery is counted
(``IngestStats.stale_deliveries``), ONE ``stale_subscription`` warning is logged, and the
connection is reset once: announce ``offline`` (main connections), disconnect, reconnect with
``clean_start=True`` (the broker drops the old session, queued messages included), subscribe
again and announce ``online``: a post resends everything not acknowledged when central comes
online, so what the dropped session held is sent again at once (with other workers still
online it is sent again after the post's ack timeout).

No loop: a guard resets at most once in its life (one per client id and process), and only a
connection that resumed a session; a clean start has no stale subscription by construction.

A broker may go without Subscription Identifiers (CONNACK "Subscription Identifier Available" =
0); it answers a SUBSCRIBE carrying one with DISCONNECT 0xA1, so ingest would reconnect and be
refused forever. ``SessionGuard.on_connack`` reads the flag (``subscription_ids_available``) and
``connected()`` then raises ``BrokerUnsupported``: central stops with one ``broker_unsupported``
error naming the capability and the remedy. Fatal rather than subscribing without identifiers:
without them a stale subscription of a resumed session cannot be told from ours, so central
would silently do all its work twice (or give one worker the whole fleet) after a change of
``ingest.shared_group``; the project's broker (Mosquitto 2, ``broker/``) supports them, so a
broker without them is a deployment mistake to fix, not a mode to run in.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from central_sync.errors import BrokerUnsupported
from central_sync.ingest_stats import IngestStats
from edge.logs import log_event

#: Largest Subscription Identifier MQTT 5 allows (a variable byte integer; 0 is not allowed).
MAX_SUBSCRIPTION_ID = 268_435_455

Subscriptions = Sequence[tuple[str, SubscribeOptions]]


def subscription_id(subs: Subscriptions) -> int:
    """A stable identifier (1..268,435,455) of a subscription set: the same filters and options
    give the same number in every process and version; another set almost surely another."""
    digest = hashlib.sha256()
    for topic, o in sorted(subs, key=lambda s: s[0]):
        line = f"{topic}\0{o.QoS}\0{int(o.noLocal)}\0{int(o.retainAsPublished)}\0{o.retainHandling}\n"
        digest.update(line.encode())
    return int.from_bytes(digest.digest()[:8], "big") % MAX_SUBSCRIPTION_ID + 1


def subscribe_properties(sid: int) -> Properties:
    """SUBSCRIBE properties carrying the Subscription Identifier ``sid``."""
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = sid
    return props


def subscription_ids_available(properties: Properties | None) -> bool:
    """Whether a CONNACK's properties allow Subscription Identifiers: MQTT 5 (3.2.2.3.12) says
    an absent "Subscription Identifier Available" means they are available; only 0 refuses."""
    return getattr(properties, "SubscriptionIdentifierAvailable", 1) != 0


class SessionGuard:
    """The subscription set of one fixed client id, and the one-time reset of a stale session.

    Use per connection attempt: ``clean_start()`` for the CONNECT, ``on_connack`` as the
    client's CONNACK hook (``mqtt_central.make_client``), ``connected()`` right after the
    CONNACK, subscribe with ``properties()``, ``arm(reset)`` once subscribed, ``check`` every
    delivery (``mqtt_central.deliver_inline`` compares ``expected`` itself), and once the
    connection ended ``take_reset()`` says whether it ended for a reset (reconnect at once, no backoff)."""

    def __init__(self, client_id: str, subs: Subscriptions, stats: IngestStats, log: logging.Logger,
                 broker: str = "") -> None:
        self.client_id = client_id
        self.broker = broker  # host:port, for the error when the broker lacks identifiers
        self.subs = list(subs)
        self.sid = subscription_id(self.subs)
        #: What every delivery of ours carries (compared as a whole: one list comparison).
        self.expected = [self.sid]
        self._stats = stats
        self._log = log
        self._clean_next = False
        self._resumed = False
        self._reset: Callable[[], None] | None = None
        self._reset_used = False
        self._reset_pending = False
        self._warned = False
        self._ids_available = True

    def on_connack(self, properties: Properties | None) -> None:
        """The CONNACK's properties (called by paho's CONNACK handling, before ``connected``)."""
        self._ids_available = subscription_ids_available(properties)

    def clean_start(self) -> bool:
        """``clean_start`` for the next CONNECT: True only after a reset was asked for."""
        self._resumed = not self._clean_next
        return self._clean_next

    def connected(self) -> None:
        """Right after the CONNACK: a clean start asked for has happened. Raises
        ``BrokerUnsupported`` (logged once as ``broker_unsupported``) when the CONNACK said the
        broker has no Subscription Identifiers: subscribing would only be refused (0xA1)."""
        if not self._ids_available:
            action = ("use a broker with MQTT 5 Subscription Identifiers (Mosquitto 2, broker/) "
                      "or enable them in its configuration")
            log_event(self._log, "broker_unsupported", logging.ERROR, client_id=self.client_id,
                      broker=self.broker, capability="subscription_identifiers", action=action)
            raise BrokerUnsupported("subscription_identifiers", (
                f"the MQTT broker {self.broker} does not support MQTT 5 Subscription Identifiers "
                f"(CONNACK 'Subscription Identifier Available' = 0); central needs them to detect "
                f"stale subscriptions: {action}"))
        if not self._resumed:
            self._clean_next = False

    def arm(self, reset: Callable[[], None]) -> None:
        """Subscribed (and presence announced): from now on a reset calls ``reset`` (which ends
        the connection with a DISCONNECT) at once. A reset found earlier (a resumed session's
        queued messages arrive right after the CONNACK) waits for this: a disconnect during the
        SUBSCRIBE or the ``online`` publish would leave aiomqtt waiting for its acknowledgement
        until its timeout."""
        self._reset = reset
        if self._reset_pending:
            asyncio.get_running_loop().call_soon(reset)

    def properties(self) -> Properties:
        return subscribe_properties(self.sid)

    def check(self, properties: Properties | None, topic: str) -> None:
        """Per delivery: count and act on one that does not carry exactly our identifier."""
        if getattr(properties, "SubscriptionIdentifier", None) != self.expected:
            self.stale(properties, topic)

    def stale(self, properties: Properties | None, topic: str) -> None:
        """A delivery caused by a subscription we did not make (the message is handled anyway)."""
        self._stats.stale_deliveries += 1
        reset = self._resumed and not self._reset_used
        if not self._warned:
            self._warned = True
            log_event(self._log, "stale_subscription", logging.WARNING, client_id=self.client_id,
                      topic=topic[:120], carried=getattr(properties, "SubscriptionIdentifier", None),
                      expected=self.sid, reset=reset)
        if not reset:
            return
        self._reset_used = self._reset_pending = self._clean_next = True
        self._stats.session_resets += 1
        if self._reset is not None:  # not from inside paho's packet handling: on the next turn
            asyncio.get_running_loop().call_soon(self._reset)

    @property
    def resetting(self) -> bool:
        """A reset was asked for on the current connection (its end is no failure)."""
        return self._reset_pending

    def take_reset(self) -> bool:
        """Whether the connection that just ended was ended by a reset (then: reconnect now)."""
        pending, self._reset_pending = self._reset_pending, False
        self._reset = None
        return pending

