"""The ack-timeout and resend policy of the event uplink (``edge.sync.uplink.EventUplink``).

Ack timeouts adapt and back off: the base limit is ``ack_timeout_s`` or, when Acks take longer,
the smoothed publish->Ack time plus four times its deviation (RFC 6298's retransmission timer,
capped at ``MAX_ADAPTIVE_FACTOR * ack_timeout_s``): when a whole fleet reconnects with a backlog,
central acknowledges every post's events minutes after they were published, and resending what
still waits in the broker's queue only multiplies the queue (measured: 1.5 million resends for
a million events). After a round of timeouts the next limit is the base times ``2**n`` (``n``
capped by ``MAX_TIMEOUT_DOUBLINGS``) times a random factor in [1, 1 + ``TIMEOUT_JITTER``]; any
ack resets ``n``. What an overdue round resends (``overdue_to_resend``): the overdue events
published BEFORE an event central has since acknowledged (evidence they were lost: the broker
and central keep a post's order); with no such evidence (no Ack at all since: central slow,
absent or everything lost) only the oldest ``PROBE_EVENTS`` go again as a probe, and their Ack
is then the evidence for the rest. P1 Acks (they overtake everything on their own channel) are
no evidence, nor are Acks of resent events (Karn's rule: the Ack may be for the first copy, so
neither the resend's time nor its round trip is known); those give no round-trip sample either.
So when a whole window was lost (a broker restart while the post published it) the probes'
Acks are the only ones: each round whose probes were acknowledged doubles the next probe
(``next_probe``), so the lost window goes again in a few rounds instead of ``PROBE_EVENTS`` per
round; any first-copy Ack (real evidence) resets it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Ack-timeout backoff: at most this many doublings of ``ack_timeout_s``.
MAX_TIMEOUT_DOUBLINGS = 3
#: Ack timeouts are stretched by a random factor in [1, 1 + this] so posts do not resend in step.
TIMEOUT_JITTER = 0.25
#: Ack round-trip smoothing (RFC 6298: alpha, beta, K) for the adaptive ack timeout.
RTT_ALPHA, RTT_BETA, RTT_K = 0.125, 0.25, 4.0
#: The adaptive base timeout is at most this many times ``ack_timeout_s``.
MAX_ADAPTIVE_FACTOR = 16.0
#: Overdue events resent in a round without evidence of loss (see the module doc).
PROBE_EVENTS = 20


@dataclass(frozen=True, slots=True)
class Backoff:
    """How ack timeouts back off: at most ``max_doublings`` doublings, each timeout stretched by
    a random factor in [1, 1 + ``jitter``]. ``FIXED_TIMEOUT`` (0, 0.0) is the post before the
    backoff existed, a fixed ack timeout (``bench/central_outage.py`` baseline)."""

    max_doublings: int = MAX_TIMEOUT_DOUBLINGS
    jitter: float = TIMEOUT_JITTER

    def __post_init__(self) -> None:
        if self.max_doublings < 0 or self.jitter < 0:
            raise ValueError(f"backoff needs max_doublings >= 0 and jitter >= 0, not {self}")


#: The post's backoff, and a fixed ack timeout (no doubling, no jitter).
DEFAULT_BACKOFF = Backoff()
FIXED_TIMEOUT = Backoff(max_doublings=0, jitter=0.0)


class AckTimeout:
    """The current ack timeout of one event lane: RTT estimate, doublings and jitter."""

    def __init__(self, ack_timeout_s: float, rng: random.Random, backoff: Backoff = DEFAULT_BACKOFF) -> None:
        self.ack_timeout_s = ack_timeout_s
        self._rng = rng
        self.max_doublings = backoff.max_doublings
        self.jitter = backoff.jitter
        self.doublings = 0
        self.srtt: float | None = None  # smoothed publish->Ack time (s)
        self.rttvar = 0.0
        self.current_s = self._timeout_for(0)

    def base_s(self) -> float:
        """``ack_timeout_s``, or more while Acks are slower (RTT estimate, capped)."""
        if self.srtt is None:
            return self.ack_timeout_s
        adaptive = self.srtt + RTT_K * self.rttvar
        return min(max(self.ack_timeout_s, adaptive), self.ack_timeout_s * MAX_ADAPTIVE_FACTOR)

    def _timeout_for(self, doublings: int) -> float:
        return self.base_s() * (2 ** doublings) * self._rng.uniform(1.0, 1.0 + self.jitter)

    def observe(self, sample: float) -> None:
        """One publish->Ack time (the slowest event of one Ack)."""
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = (1 - RTT_BETA) * self.rttvar + RTT_BETA * abs(self.srtt - sample)
            self.srtt = (1 - RTT_ALPHA) * self.srtt + RTT_ALPHA * sample

    def reset(self) -> None:
        """An Ack arrived (or central came online): no more doublings."""
        self.doublings = 0
        self.current_s = self._timeout_for(0)

    def back_off(self) -> float:
        """A round of timeouts happened: one more doubling (capped); returns the new timeout."""
        self.doublings = min(self.max_doublings, self.doublings + 1)
        self.current_s = self._timeout_for(self.doublings)
        return self.current_s


def overdue_to_resend(inflight: dict[str, float], now: float, limit: float, acked_sent: float,
                      probe: int = PROBE_EVENTS) -> list[str]:
    """The event ids of ``inflight`` (id -> publish time) to resend in a timeout round: those
    overdue (older than ``limit``) and published before ``acked_sent`` (the latest publish time
    of an acknowledged event: evidence they were lost), else the oldest ``probe`` overdue
    ones as a probe; empty when none is overdue."""
    old = [i for i, t in inflight.items() if now - t > limit]
    if not old:
        return []
    lost = [i for i in old if inflight[i] < acked_sent]
    return lost or sorted(old, key=inflight.__getitem__)[:probe]


def next_probe(probe: int, probes_acked: bool, cap: int) -> int:
    """The probe size of the next round: doubled (up to ``cap``) when the last probes were
    acknowledged (central is there; what it has not acknowledged is evidently lost), else kept."""
    return min(cap, probe * 2) if probes_acked else probe
