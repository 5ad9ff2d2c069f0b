"""Readable words for the desk: incident and event types, states, lifecycle steps, siren state,
event payloads, places and times in the configured zone. Never a raw dict or JSON on a page.

Every string goes through gettext (``central_sync.web.i18n``), so the same call gives Bahasa
Indonesia or English depending on the request.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.numbers import format_decimal
from jinja2 import Environment

from central_sync.errors import CentralConfigError
from central_sync.web import i18n
from central_sync.web.i18n import _
from central_sync.web.places import Places
from central_sync.web_settings import WebSettings

#: Indonesia's three zones have well-known labels; elsewhere the zone's own abbreviation.
ZONE_LABELS = {"Asia/Jakarta": "WIB", "Asia/Pontianak": "WIB", "Asia/Makassar": "WITA",
               "Asia/Jayapura": "WIT"}

# Marked for extraction here, translated when shown (the request's language is not known yet).
def N_(s: str) -> str:  # the gettext convention for "translate later"
    return s


TYPE_NAMES: dict[str, str] = {
    "PANIC": N_("Panic"), "PEMBUNUHAN": N_("Murder"), "PERAMPOKAN": N_("Robbery"),
    "PENCURIAN": N_("Theft"), "KEBAKARAN": N_("Fire"), "BENCANA": N_("Disaster"),
    "PENCURIAN_HEWAN": N_("Livestock theft"), "LAKA_LANTAS": N_("Traffic accident"),
    "KERIBUTAN": N_("Disturbance"), "LELAYU": N_("Death notice"),
    "KUMPUL": N_("Residents' assembly call"), "PATROLI": N_("Patrol check-in"),
    "AMAN": N_("All clear"), "TEST": N_("Test"),
    "TAMPER": N_("Tampering with the post"), "BUTTON_SILENT": N_("Silent button"),
    "SIREN_STOPPED": N_("Siren stopped"), "SIREN_MAX_ON": N_("Siren reached its time limit"),
    "SIREN_FAULT": N_("Siren fault"), "CAMERA_FAULT": N_("Camera fault"),
    "MODEM_FAULT": N_("Modem fault"), "STORAGE_QUARANTINED": N_("Storage quarantined"),
    "EVICTION": N_("Old records removed (storage full)"), "SMS_SENT": N_("Backup SMS sent"),
    "COMMAND": N_("Command from central"), "SECURITY": N_("Security warning"),
    "INCIDENT_ACK": N_("Acknowledgement received by the post"), "BOOT": N_("Post started"),
    "SELFTEST": N_("Self-test"), "POST_OFFLINE": N_("Post offline"),
}
STATE_NAMES = {"new": N_("New"), "acknowledged": N_("Acknowledged"),
               "resolved": N_("Resolved"), "false_alarm": N_("False alarm")}
STEP_NAMES = {"new": N_("Opened"), "acknowledged": N_("Acknowledged"),
              "resolved": N_("Resolved"), "false_alarm": N_("Marked as a false alarm"),
              "restored": N_("Post back online"), "escalated": N_("Escalated to the supervisor"),
              "escalation_delivered": N_("Supervisor notified"),
              "escalation_failed": N_("Supervisor notification failed")}
PRIORITY_NAMES = {1: N_("P1 urgent"), 2: N_("P2 high"), 3: N_("P3 normal"), 4: N_("P4 info")}
CLOCK_NAMES = {"synced": N_("synchronised"), "holdover": N_("holding (last sync)"),
               "unsynced": N_("not synchronised")}
POST_STATUS = {"online": N_("Online"), "offline": N_("Offline"), "stale": N_("Not heard lately"),
               "unknown": N_("Unknown")}
TRIGGER_SOURCES = {"button": N_("button"), "command": N_("command from central"),
                   "schedule": N_("schedule"), "selftest": N_("self-test"),
                   "sms": N_("SMS")}
PAYLOAD_LABELS = {
    "button": N_("Button"), "hold_ms": N_("Held for"), "reporter": N_("Reporter"),
    "phone": N_("Phone"), "reporter_phone": N_("Reporter's phone"), "text": N_("Message"),
    "operator": N_("Operator"), "note": N_("Note"), "reason": N_("Reason"),
    "pattern": N_("Pattern"), "detail": N_("Detail"), "error": N_("Error"),
    "recipients": N_("Recipients"), "action": N_("Action"), "result": N_("Result"),
    "incident_type": N_("Incident type"), "sensor": N_("Sensor"),
}
HIDDEN_PAYLOAD_KEYS = frozenset({"incident_id", "event_id"})


def type_name(kind: str | None) -> str:
    if not kind:
        return "-"
    return _(TYPE_NAMES[kind]) if kind in TYPE_NAMES else kind.replace("_", " ").capitalize()


def state_name(state: str | None) -> str:
    return _(STATE_NAMES[state]) if state in STATE_NAMES else str(state or "-")


def step_name(step: str | None) -> str:
    return _(STEP_NAMES[step]) if step in STEP_NAMES else str(step or "-")


def priority_name(priority: int | None) -> str:
    return _(PRIORITY_NAMES[int(priority)]) if priority in PRIORITY_NAMES else f"P{priority}"


def clock_name(quality: str | None) -> str:
    return _(CLOCK_NAMES[quality]) if quality in CLOCK_NAMES else _("unknown")


def post_status(status: str | None) -> str:
    return _(POST_STATUS[status]) if status in POST_STATUS else _("Unknown")


def actor_name(actor: str | None) -> str:
    """``post:pos-x`` -> "the post pos-x"; staff names as they are."""
    if not actor:
        return "-"
    if actor.startswith("post:"):
        return _("post %(node)s") % {"node": actor[5:]}
    if actor == "staff":
        return _("staff")
    if actor.startswith("central:"):
        return _("central (automatic)")
    return actor


def _seconds(value: Any) -> str:
    number = format_decimal(float(value), format="#,##0.#", locale=i18n.current())
    return _("%(n)s s") % {"n": number}


def _plain(value: Any) -> str:
    """Any JSON value as short words: lists joined, mappings as "key: value" pairs."""
    if isinstance(value, bool):
        return _("yes") if value else _("no")
    if value is None:
        return "-"
    if isinstance(value, Mapping):
        return "; ".join(f"{payload_label(str(k))}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_plain(v) for v in value)
    return str(value)


def payload_label(key: str) -> str:
    return _(PAYLOAD_LABELS[key]) if key in PAYLOAD_LABELS else key.replace("_", " ").capitalize()


def payload_items(payload: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """An event payload as (label, readable value) pairs."""
    items: list[tuple[str, str]] = []
    for key, value in (payload or {}).items():
        if key in HIDDEN_PAYLOAD_KEYS or value in (None, "", [], {}):
            continue
        if key == "hold_ms":
            text = _seconds(float(value) / 1000.0) if isinstance(value, int | float) else str(value)
        elif key == "incident_type":
            text = type_name(str(value))
        else:
            text = _plain(value)
        items.append((payload_label(key), text))
    return items


def siren_text(siren: Any) -> str:
    """A post's reported siren state in words ("Sounding: Panic, by the button")."""
    if not isinstance(siren, Mapping) or not siren:
        return _("Not reported")
    if siren.get("error"):
        return _("Siren state could not be read")
    trigger = siren.get("trigger") if isinstance(siren.get("trigger"), Mapping) else None
    if siren.get("playing"):
        parts = [_("Sounding")]
        if trigger:
            what = type_name(trigger.get("incident_type")) if trigger.get("incident_type") else ""
            source = trigger.get("source")
            by = _(TRIGGER_SOURCES[source]) if source in TRIGGER_SOURCES else str(source or "")
            detail = ", ".join(p for p in (what, _("by %(source)s") % {"source": by}
                                           if by else "") if p)
            if detail:
                parts.append(detail)
        return ": ".join(parts)
    if siren.get("relay_on"):
        return _("Relay on (not sounding a pattern)")
    return _("Silent")


class Clock:
    """Times in the configured zone, labelled (``2026-11-29 23:41:05 WIB``)."""

    def __init__(self, zone: str) -> None:
        try:
            self.zone = ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise CentralConfigError(f"unknown time zone {zone!r}", "web.timezone") from None
        self.name = zone

    def label(self, at: dt.datetime) -> str:
        return ZONE_LABELS.get(self.name) or at.tzname() or self.name

    def fmt(self, ts: float | None, with_date: bool = True) -> str:
        if not ts:
            return "-"
        at = dt.datetime.fromtimestamp(float(ts), self.zone)
        pattern = "%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S"
        return f"{at.strftime(pattern)} {self.label(at)}"

    @property
    def short_label(self) -> str:
        return self.label(dt.datetime.now(self.zone))


@functools.cache
def clock_for(zone: str) -> Clock:
    return Clock(zone)


def desk_strings() -> dict[str, str]:
    """Words the desk's scripts show, in the request's language."""
    return {
        "live": _("live"), "reconnecting": _("reconnecting"), "offline": _("offline"),
        "connecting": _("connecting"), "ago": _("last message %(s)s s ago"),
        "acknowledge": _("Acknowledge"), "mute": _("Mute this alarm"),
        "unmute": _("Sound this alarm again"), "min": _("min"), "target": _("target"),
        "late": _("past the response target"), "p1": _("P1 alarm"),
        "failed": _("Failed"), "sent": _("sent"), "not_sent": _("NOT sent"),
        "open_incident": _("Open incident"), "no_incidents": _("No open incidents."),
        "no_posts": _("No posts."), "approx": _("approximate position"),
        "resynced": _("Queue re-read from the server"),
        "link_quiet": _("No message from any post lately: the link to the broker may be broken."),
        "link_no_ingest": _("No ingest process is connected to the broker."),
    }


def install(env: Environment, settings: WebSettings, places: Places) -> None:
    """Filters and globals the templates use (replaces the fixed-WIB ``fmt_time``)."""
    clock = clock_for(settings.timezone)
    env.filters.update({
        "fmt_time": clock.fmt, "type_name": type_name, "state_name": state_name,
        "step_name": step_name, "priority_name": priority_name, "clock_name": clock_name,
        "post_status": post_status, "actor_name": actor_name, "siren_text": siren_text,
        "payload_items": payload_items, "kelurahan_name": places.kelurahan_name,
        "area_name": places.area,
    })
    env.globals["desk_strings"] = desk_strings
    env.globals["now_ts"] = time.time
    env.globals.update({"zone_label": clock.short_label,
                        "response_target": lambda p: settings.response_target_s.get(int(p)),
                        })
