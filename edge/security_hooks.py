"""Loads the node's security hooks (signing of events and of every other uplink message, command
verification, snapshot sealing) from the config's ``security`` section (installed from the
enrolment bundle).

A node without a ``security`` section (a development node) signs nothing and REJECTS every
downlink command: with no central key to check against, nothing may sound its siren remotely.
Local buttons always work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.clock import Clock
from edge.config import NodeConfig
from edge.credentials import credential_path
from edge.errors import SecurityError
from edge.sealing import Sealer
from edge.signing import CommandVerifier, EventSigner, MessageSigner, load_verify_key
from edge.sync.wire import Command, EventEnvelope


@dataclass
class SecurityHooks:
    sign_event: Callable[[EventEnvelope], EventEnvelope] | None = None
    #: Signs every other uplink kind (snapshot, presence, heartbeat, command result).
    sign_message: MessageSigner | None = None
    verify_command: Callable[[Command], None] | None = None
    sealer: Callable[[bytes], bytes] | None = None


def _reject_all(cmd: Command) -> None:
    raise SecurityError("no_command_key", "this node has no security section: remote commands "
                        "are refused (install an enrolment bundle)")


def load_security_hooks(cfg: NodeConfig, clock: Clock) -> SecurityHooks:
    """Build the hooks from the key files named in ``cfg.security``."""
    sec = cfg.security
    if sec is None:
        return SecurityHooks(verify_command=_reject_all)
    signer = EventSigner.from_file(credential_path(sec.node_signing_key_file))
    verifier = CommandVerifier(
        load_verify_key(credential_path(sec.central_command_key_file)), cfg.node.node_id,
        max_age_seconds=sec.command_max_age_seconds,
        # An unsynced node clock is corrected by central's time from acknowledgements.
        clock=lambda: clock.now()[0],
        require_signed=sec.require_signed_commands,
        state_file=Path(cfg.storage.state_dir) / "seen-commands.json",
    )
    sealer = Sealer.from_file(sec.central_seal_key_file) if sec.central_seal_key_file else None
    return SecurityHooks(sign_event=signer.sign, sign_message=signer, verify_command=verifier,
                         sealer=sealer)
