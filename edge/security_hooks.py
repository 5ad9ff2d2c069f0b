"""Loads the node's security hooks (event signing, command verification, snapshot sealing) from
the config's ``security`` section. Without one (development nodes) commands are accepted only
when they are unsigned-tolerant is explicitly configured; see docs/security.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge.clock import Clock
from edge.config import NodeConfig
from edge.sync.wire import Command, EventEnvelope


@dataclass
class SecurityHooks:
    sign_event: Callable[[EventEnvelope], EventEnvelope] | None = None
    verify_command: Callable[[Command], None] | None = None
    sealer: Callable[[bytes], bytes] | None = None


def load_security_hooks(cfg: NodeConfig, clock: Clock) -> SecurityHooks:
    """Build the hooks from key files named in ``cfg.security`` (none on a dev node)."""
    if cfg.security is None:
        return SecurityHooks()
    raise NotImplementedError("wired once edge.signing / edge.sealing exist")
