"""Per-node rejection budget: a post that keeps sending what central must refuse stops costing it.

Refusing a message is not free: decoding, validating and above all an Ed25519 verification per
badly signed message (about 0.1 ms, several times that on a busy machine). An enrolled post that
floods bad signatures could otherwise make central spend its CPU on it while good posts' events
wait behind the flood in the same broker session (issue 10: good-ingest rate under a 10x flood
must stay >= 0.7x, ``bench/flood.py``).

So each node has a token bucket of REJECTIONS (``ingest.reject_burst`` tokens, refilled at
``ingest.reject_rate_per_s``). Every rejection of the node takes a token; while its bucket is
empty, its next messages are *shed*: not decoded, not verified, counted (reason ``shed``, through
the same aggregated rejection path) and settled (PUBACK). A post that sends valid messages is
never rejected, so it is never shed; a post shed by mistake loses nothing for good, because what
central did not acknowledge the post sends again (docs/protocol.md, "Store-and-forward").

Single-threaded (ingest's event loop); memory: one small entry per node that was ever rejected,
dropped once its bucket is full again.

Why not a library: the limiter is keyed by node, charged on the OUTCOME (a rejection) and asked
before the work; ``limits``/``aiolimiter`` charge the call itself. Ten lines of token bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RejectBudget:
    def __init__(self, *, burst: int, rate_per_s: float, clock: Callable[[], float] = time.monotonic,
                 max_nodes: int = 100_000) -> None:
        self.burst = float(burst)
        self.rate = rate_per_s
        self.max_nodes = max_nodes
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}  # node -> (tokens, at)
        self.shed = 0

    @property
    def active(self) -> bool:
        """Some node has spent part of its budget (else nothing can be shed: a cheap pre-check)."""
        return bool(self._tokens)

    def _level(self, node: str, now: float) -> float:
        tokens, at = self._tokens.get(node, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def exhausted(self, node: str | None) -> bool:
        """True when ``node``'s messages are to be shed now (its budget of rejections is spent)."""
        if node is None or node not in self._tokens:
            return False
        now = self._clock()
        level = self._level(node, now)
        if level >= self.burst:
            del self._tokens[node]
            return False
        if level < 1.0:
            self.shed += 1
            return True
        return False

    def charge(self, node: str | None) -> None:
        """One rejection of ``node``."""
        if node is None:
            return
        now = self._clock()
        if node not in self._tokens and len(self._tokens) >= self.max_nodes:
            return  # bounded memory: a node beyond the bound is simply not throttled
        self._tokens[node] = (self._level(node, now) - 1.0, now)
