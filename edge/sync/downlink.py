"""Downlink commands (``{prefix}/down/{node}/cmd``): check, run, answer.

Checks, in this order (docs/protocol.md, "Command lifecycle"):

1. decodes as a ``Command`` (else logged and ignored: there is no trustworthy id to answer),
2. ``node_id`` is this node (``wrong_node``),
3. not expired: ``expires_at`` >= our (corrected) wall clock (``expired``),
4. the ``verify_command`` hook accepts it (signature, replay window; ``SecurityError.reason``),
5. ``command_id`` not seen recently (``duplicate``; bounded set, remembered only after 4 passed
   so a forged command cannot block a genuine one's id).

A rejected command -> ``security_event("command_rejected", {...})`` and
``CommandResult(ok=False, detail=reason)``; an accepted one -> ``handler.handle(cmd)`` ->
``CommandResult(ok, detail, data)``. Handler errors become ``ok=False`` results, never crashes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from edge.clock import Clock
from edge.errors import SecurityError, WireError
from edge.logs import log_event
from edge.sync.wire import Command, CommandResult
from edge.sync.wire_decode import decode

__all__ = ["CommandHandler", "CommandProcessor"]

log = logging.getLogger(__name__)

RECENT_IDS = 4096


class CommandHandler(Protocol):
    async def handle(self, cmd: Command) -> tuple[bool, str, dict[str, Any]]:
        """Run ``cmd``; return (ok, detail, data)."""
        ...


class CommandProcessor:
    """Turns downlink command payloads into ``CommandResult`` answers."""

    def __init__(self, node_id: str, clock: Clock, handler: CommandHandler | None, *,
                 publish_result: Callable[[CommandResult], Awaitable[None]],
                 verify_command: Callable[[Command], None] | None = None,
                 security_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.node_id = node_id
        self.clock = clock
        self.handler = handler
        self.publish_result = publish_result
        self.verify_command = verify_command
        self.security_event = security_event
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.accepted = 0
        self.rejected = 0
        self.malformed = 0

    def check(self, cmd: Command) -> str | None:
        """The rejection reason for ``cmd``, or None when it may run (records its id)."""
        if cmd.node_id != self.node_id:
            return "wrong_node"
        now, _q = self.clock.now()
        if cmd.expires_at < now:
            return "expired"
        if self.verify_command is not None:
            try:
                self.verify_command(cmd)
            except SecurityError as exc:
                return exc.reason or "security"
        if cmd.command_id in self._recent:
            return "duplicate"
        self._recent[cmd.command_id] = None
        while len(self._recent) > RECENT_IDS:
            self._recent.popitem(last=False)
        return None

    async def on_payload(self, payload: bytes) -> CommandResult | None:
        """Handle one downlink command payload; returns the result sent (None if malformed)."""
        try:
            cmd = decode(payload, expected_kind="command")
        except WireError as exc:
            self.malformed += 1
            log_event(log, "command_malformed", logging.WARNING, node_id=self.node_id,
                      reason=exc.reason, detail=exc.detail)
            return None
        assert isinstance(cmd, Command)
        reason = self.check(cmd)
        if reason is not None:
            self.rejected += 1
            info = {"command_id": cmd.command_id, "action": cmd.action, "reason": reason,
                    "target": cmd.node_id, "issuer": cmd.issuer}
            log_event(log, "command_rejected", logging.WARNING, node_id=self.node_id, **info)
            if self.security_event is not None:
                try:
                    self.security_event("command_rejected", info)
                except Exception:
                    log.exception("security_event_failed")
            result = self._result(cmd, False, reason, {})
        else:
            self.accepted += 1
            log_event(log, "command_accepted", node_id=self.node_id, command_id=cmd.command_id,
                      action=cmd.action, issuer=cmd.issuer)
            if self.handler is None:
                result = self._result(cmd, False, "no_handler", {})
            else:
                try:
                    ok, detail, data = await self.handler.handle(cmd)
                    result = self._result(cmd, ok, detail, data)
                except Exception as exc:
                    log_event(log, "command_failed", logging.ERROR, node_id=self.node_id,
                              command_id=cmd.command_id, error=repr(exc))
                    result = self._result(cmd, False, f"handler_error: {exc}"[:500], {})
        await self.publish_result(result)
        return result

    def _result(self, cmd: Command, ok: bool, detail: str, data: dict[str, Any]) -> CommandResult:
        # Answer on our own topic with our own node id, even for a mis-targeted command.
        return CommandResult(command_id=cmd.command_id, node_id=self.node_id, ok=ok,
                             detail=detail[:500], at=self.clock.now()[0], data=data)
