"""Downlink command handling on the node (the sync layer has already checked target, expiry,
duplicates and the signature before anything here runs)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from edge.alarm import AlarmEngine
from edge.drivers.buttons import ButtonWatcher
from edge.drivers.siren import Trigger
from edge.errors import KentonganError, PatternError
from edge.incidents import INCIDENTS, IncidentType, Priority, SystemEvent
from edge.logs import log_event
from edge.outbox import EventDraft
from edge.patterns import parse_pattern
from edge.sync.wire import Command

log = logging.getLogger("kentongan.commands")

Result = tuple[bool, str, dict[str, Any]]

#: Sound commands remembered for a targeted ``stop`` (and stopped ids not yet seen), per kind.
SOUND_MEMORY = 512
#: Most command ids one targeted ``stop`` may name.
STOP_IDS_MAX = 64


def _remember(book: OrderedDict[str, str], key: str, value: str) -> None:
    book[key] = value
    book.move_to_end(key)
    while len(book) > SOUND_MEMORY:
        book.popitem(last=False)


class NodeCommands:
    """Implements the sync layer's ``CommandHandler`` protocol for a post."""

    def __init__(
        self,
        engine: AlarmEngine,
        buttons: dict[str, ButtonWatcher],
        *,
        take_snapshot: Callable[[str | None, int], Awaitable[int]],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        self.engine = engine
        self.siren = engine.siren
        self.cfg = engine.cfg
        self.buttons = buttons
        self.take_snapshot = take_snapshot
        self.status = status
        #: command id of a ``sound`` -> the siren activation it started.
        self._sounded: OrderedDict[str, str] = OrderedDict()
        #: command ids a targeted ``stop`` named before their ``sound`` arrived (refused then).
        self._cancelled: OrderedDict[str, str] = OrderedDict()

    async def handle(self, cmd: Command) -> Result:
        handler = getattr(self, f"_do_{cmd.action}", None)
        if handler is None:
            return False, f"unsupported action {cmd.action!r}", {}
        trigger = Trigger("command", f"{cmd.command_id} by {cmd.issuer}")
        ok, detail, data = await handler(cmd, trigger)
        log_event(log, "command_handled", command_id=cmd.command_id, action=cmd.action,
                  issuer=cmd.issuer, ok=ok, detail=detail)
        self.engine.record(EventDraft(
            SystemEvent.COMMAND.value,
            int(Priority.P3 if cmd.action in ("sound", "stop", "incident_ack", "config")
                else Priority.P4),
            {"command_id": cmd.command_id, "action": cmd.action, "issuer": cmd.issuer,
             "params": cmd.params, "ok": ok, "detail": detail},
        ))
        return ok, detail, data

    async def _do_sound(self, cmd: Command, trigger: Trigger) -> Result:
        if cmd.command_id in self._cancelled:
            return False, "cancelled", {}
        params = cmd.params
        kind_text = params.get("incident_type")
        try:
            kind = IncidentType(kind_text) if kind_text else None
        except ValueError:
            return False, f"unknown incident_type {kind_text!r}", {}
        pattern_text = params.get("pattern")
        prio_raw = params.get("priority", INCIDENTS[kind].priority if kind else Priority.P3)
        if not isinstance(prio_raw, int) or not 1 <= prio_raw <= 4:
            return False, "priority must be 1..4", {}
        trig = Trigger("command", trigger.detail, kind.value if kind else None)
        if pattern_text is not None:
            if not isinstance(pattern_text, str):
                return False, "pattern must be a string", {}
            try:
                pattern = parse_pattern(pattern_text)
            except PatternError as exc:
                return False, f"bad pattern: {exc}", {}
            act = self.siren.play(pattern, trig, priority=prio_raw)
        elif kind is not None:
            act = self.engine.sound(kind, trig, priority=prio_raw)
        else:
            return False, "sound needs 'incident_type' or 'pattern'", {}
        log_event(log, "siren_activation", trigger_source="command", trigger_detail=trig.detail,
                  activation_id=act.activation_id, pattern=act.pattern,
                  suppressed=act.suppressed, priority=prio_raw)
        if act.suppressed is None:
            _remember(self._sounded, cmd.command_id, act.activation_id)
        data = {"activation_id": act.activation_id, "suppressed": act.suppressed}
        return act.suppressed is None, act.suppressed or "sounding", data

    async def _do_stop(self, cmd: Command, trigger: Trigger) -> Result:
        """Without params: whatever is playing. With ``command_ids``: only what those ``sound``
        commands started (a local alarm that took over keeps sounding); an id not yet seen is
        remembered so that its ``sound``, arriving late, is refused."""
        ids = cmd.params.get("command_ids")
        if ids is None:
            was = self.siren.stop("command", trigger)
            return True, "stopped" if was else "was not playing", {"stopped": was}
        if not (isinstance(ids, list) and 0 < len(ids) <= STOP_IDS_MAX
                and all(isinstance(i, str) and 0 < len(i) <= 64 for i in ids)):
            return False, f"command_ids must be a list of 1..{STOP_IDS_MAX} command ids", {}
        activations = frozenset(self._sounded[i] for i in ids if i in self._sounded)
        for i in ids:
            if i not in self._sounded:
                _remember(self._cancelled, i, cmd.command_id)
        was = bool(activations) and self.siren.stop("command", trigger, activation_ids=activations)
        return True, "stopped" if was else "was not playing", {"stopped": was}

    async def _do_test(self, cmd: Command, trigger: Trigger) -> Result:
        trig = Trigger("test", trigger.detail, IncidentType.TEST.value)
        act = self.siren.play(self.cfg.siren.pattern_for(IncidentType.TEST), trig,
                              priority=int(Priority.P4),
                              max_seconds=self.cfg.siren.test_max_seconds)
        return act.suppressed is None, act.suppressed or "chirped", {
            "activation_id": act.activation_id}

    async def _do_snapshot(self, cmd: Command, trigger: Trigger) -> Result:
        n = await self.take_snapshot(None, int(Priority.P3))
        return n > 0, f"{n} frame(s) stored", {"frames": n}

    async def _do_status(self, cmd: Command, trigger: Trigger) -> Result:
        return True, "status", self.status()

    async def _do_incident_ack(self, cmd: Command, trigger: Trigger) -> Result:
        incident_id = cmd.params.get("incident_id")
        operator = str(cmd.params.get("operator", cmd.issuer))[:80]
        known = self.engine.acknowledge(incident_id if isinstance(incident_id, str) else None,
                                        operator)
        # Help is coming: the patrol must hear it, so the ack pattern pre-empts what is playing.
        act = self.siren.play(parse_pattern(self.cfg.siren.ack_pattern),
                              Trigger("command", trigger.detail, "INCIDENT_ACK"),
                              priority=int(Priority.P1), max_seconds=10)
        self.engine.record(EventDraft(
            SystemEvent.INCIDENT_ACK.value, int(Priority.P3),
            {"incident_id": incident_id, "operator": operator,
             "note": str(cmd.params.get("note", ""))[:200], "known_incident": known,
             "activation_id": act.activation_id},
            incident_id if isinstance(incident_id, str) else None,
        ))
        return True, "acknowledged", {"known_incident": known}

    async def _do_config(self, cmd: Command, trigger: Trigger) -> Result:
        if "renew_certificate" in cmd.params:
            return await self._renew_certificate(cmd)
        hold = cmd.params.get("hold_seconds")
        if not isinstance(hold, int | float) or not 0 <= hold <= 30:
            return False, "config supports hold_seconds (0..30)", {}
        target = cmd.params.get("incident_type", IncidentType.PANIC.value)
        changed = []
        for name, watcher in self.buttons.items():
            if watcher.cfg.incident.value == target:
                watcher.set_hold_seconds(float(hold))
                changed.append(name)
        return bool(changed), f"hold_seconds={hold} on {changed}", {"buttons": changed}

    async def _renew_certificate(self, cmd: Command) -> Result:
        """Install a renewed TLS certificate (same key; checked against our CA and node id).
        It is used from the next broker connection; the current one stays up."""
        from edge.bundle import apply_certificate_renewal

        try:
            path = await asyncio.to_thread(apply_certificate_renewal, self.cfg, cmd.params)
        except KentonganError as exc:
            log_event(log, "certificate_renewal_rejected", logging.WARNING,
                      command_id=cmd.command_id, error=str(exc))
            return False, f"renewal rejected: {exc}", {}
        log_event(log, "certificate_renewed", command_id=cmd.command_id, path=str(path))
        return True, "certificate renewed; used from the next connection", {"path": str(path)}
