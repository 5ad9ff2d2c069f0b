"""Is central there? The post's view of central's retained presence (Sparkplug B style).

Each central ingest connection keeps a retained ``CentralState`` on
``{prefix}/central/state/{central_id}``: ``online`` after it subscribed, ``offline`` as its last
will (and on a clean stop). The post subscribes to ``{prefix}/central/state/+`` and treats central
as **present while at least one central_id reads online**.

Backward compatibility (docs/protocol.md, "Central presence"): a post that has never seen any
central state (an older central, a development broker) treats central as present and behaves as
before presence existed (ack timeouts decide resends). Once one state has been seen, presence
rules.
"""

from __future__ import annotations

import logging

from edge.errors import WireError
from edge.logs import log_event
from edge.sync.wire import CentralState, Topics
from edge.sync.wire_decode import decode

__all__ = ["CentralPresence"]

log = logging.getLogger(__name__)


class CentralPresence:
    """Tracks every ``central_id``'s last retained state."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.states: dict[str, str] = {}
        self.seen = False
        #: Times central went from absent (or unknown) to present.
        self.arrivals = 0

    @property
    def present(self) -> bool:
        return not self.seen or any(s == "online" for s in self.states.values())

    @property
    def online(self) -> list[str]:
        return sorted(cid for cid, s in self.states.items() if s == "online")

    def on_message(self, topic: str, payload: bytes) -> bool | None:
        """Apply one message from the state topic. Returns True when central just arrived
        (resend now), False when it just left (go idle), None when nothing changed."""
        try:
            central_id = self.topics.parse_central_state(topic)
        except WireError:
            return None
        known = any(s == "online" for s in self.states.values())
        if not payload:  # retained state cleared: that central_id is gone
            self.states.pop(central_id, None)
        else:
            try:
                msg = decode(payload, expected_kind="central_state")
            except WireError as exc:
                log_event(log, "central_state_malformed", logging.WARNING, topic=topic,
                          reason=exc.reason, detail=exc.detail)
                return None
            assert isinstance(msg, CentralState)
            if msg.central_id != central_id:
                log_event(log, "central_state_malformed", logging.WARNING, topic=topic,
                          reason="wrong_topic", detail=msg.central_id)
                return None
            self.states[central_id] = msg.state
        first = not self.seen
        self.seen = True
        now = any(s == "online" for s in self.states.values())
        if now and (not known or first):
            self.arrivals += 1
            log_event(log, "central_online", online=self.online)
            return True
        if known and not now:
            log_event(log, "central_offline", logging.WARNING, states=dict(self.states))
            return False
        if first and not now:
            log_event(log, "central_offline", logging.WARNING, states=dict(self.states))
            return False
        return None

    def as_dict(self) -> dict[str, object]:
        return {"present": self.present, "seen": self.seen, "online": self.online,
                "arrivals": self.arrivals}
