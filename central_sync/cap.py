"""Incidents as OASIS CAP 1.2 alerts.

One message per lifecycle step: ``Alert`` when the incident opens, ``Update`` when it is
acknowledged or resolved, ``Cancel`` when staff mark it a false alarm; each later message
``references`` the earlier ones. ``status`` is Actual, Test for TEST incidents, Exercise when
``web.cap_exercise`` is set.

Scope (our choice): ``Restricted`` for RT-only notices (LELAYU, KUMPUL: a family's death notice is
nobody else's business) and for crime reports (they may carry a reporter's identity, which
UU PDP and our rules keep to police staff); ``Public`` for the rest (fire, disaster, traffic
accident, test), which neighbours and other agencies should hear.

Every message is checked before output (``CapError``): required fields, CAP enumerations,
``expires`` after ``sent``, references on Update/Cancel, a restriction when Restricted.
"""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from central_sync.errors import CentralError
from central_sync.incidents import Incident
from edge.incidents import RT_ONLY, IncidentType

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
WIB = dt.timezone(dt.timedelta(hours=7))

STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")
MSG_TYPES = ("Alert", "Update", "Cancel", "Ack", "Error")
SCOPES = ("Public", "Restricted", "Private")
CATEGORIES = ("Geo", "Met", "Safety", "Security", "Rescue", "Fire", "Health", "Env",
              "Transport", "Infra", "CBRNE", "Other")
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")
RESPONSES = ("Shelter", "Evacuate", "Prepare", "Execute", "Avoid", "Monitor", "Assess",
             "AllClear", "None")

CATEGORY = {
    "PANIC": "Security", "PEMBUNUHAN": "Security", "PERAMPOKAN": "Security",
    "PENCURIAN": "Security", "PENCURIAN_HEWAN": "Security", "KERIBUTAN": "Security",
    "KEBAKARAN": "Fire", "BENCANA": "Geo", "LAKA_LANTAS": "Transport",
    "LELAYU": "Other", "KUMPUL": "Other", "TEST": "Other",
}
EVENT_TEXT = {
    "PANIC": "Panic button (unclassified)", "PEMBUNUHAN": "Murder / violence",
    "PERAMPOKAN": "Robbery", "PENCURIAN": "Theft", "PENCURIAN_HEWAN": "Livestock theft",
    "KERIBUTAN": "Brawl", "KEBAKARAN": "Fire", "BENCANA": "Disaster (flood, landslide, quake)",
    "LAKA_LANTAS": "Traffic accident", "LELAYU": "Death notice (lelayu)",
    "KUMPUL": "Residents' meeting (kumpul)", "TEST": "System test",
}
URGENCY = {1: "Immediate", 2: "Expected", 3: "Future", 4: "Future"}
SEVERITY = {1: "Severe", 2: "Moderate", 3: "Minor", 4: "Minor"}
_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
_FORBIDDEN = re.compile(r"[\s,&<]")


class CapError(CentralError):
    """A CAP message would be invalid; nothing is output."""


@dataclass(frozen=True)
class CapArea:
    description: str
    geocodes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CapInfo:
    category: str
    event: str
    urgency: str
    severity: str
    certainty: str
    area: CapArea
    response_type: str | None = None
    expires: dt.datetime | None = None
    sender_name: str = "Kentongan command centre"
    headline: str = ""
    description: str = ""
    instruction: str = ""
    parameters: tuple[tuple[str, str], ...] = ()
    language: str = "id-ID"


@dataclass(frozen=True)
class CapMessage:
    identifier: str
    sender: str
    sent: dt.datetime
    status: str
    msg_type: str
    scope: str
    info: CapInfo
    restriction: str | None = None
    references: tuple[str, ...] = ()
    incidents: str | None = None
    note: str | None = None
    codes: tuple[str, ...] = field(default_factory=tuple)


def cap_time(when: dt.datetime) -> str:
    """CAP date-time: seconds precision with an explicit offset (no "Z")."""
    if when.tzinfo is None:
        raise CapError("CAP times need a time zone")
    text = when.replace(microsecond=0).isoformat()
    return text.replace("+00:00", "-00:00") if text.endswith("+00:00") else text


def _check_token(name: str, value: str) -> None:
    if not value or _FORBIDDEN.search(value):
        raise CapError(f"{name} must be non-empty without spaces, commas, '&' or '<': {value!r}")


def validate(msg: CapMessage) -> None:
    """Raise ``CapError`` for anything CAP 1.2 does not allow."""
    _check_token("identifier", msg.identifier)
    _check_token("sender", msg.sender)
    for name, value, allowed in (("status", msg.status, STATUSES),
                                 ("msgType", msg.msg_type, MSG_TYPES),
                                 ("scope", msg.scope, SCOPES),
                                 ("category", msg.info.category, CATEGORIES),
                                 ("urgency", msg.info.urgency, URGENCIES),
                                 ("severity", msg.info.severity, SEVERITIES),
                                 ("certainty", msg.info.certainty, CERTAINTIES)):
        if value not in allowed:
            raise CapError(f"{name} {value!r} is not one of {allowed}")
    if msg.info.response_type is not None and msg.info.response_type not in RESPONSES:
        raise CapError(f"responseType {msg.info.response_type!r} is not allowed")
    if msg.scope == "Restricted" and not msg.restriction:
        raise CapError("a Restricted alert needs a restriction")
    if msg.msg_type in ("Update", "Cancel", "Ack", "Error") and not msg.references:
        raise CapError(f"a {msg.msg_type} needs references to earlier messages")
    if not msg.info.event or not msg.info.area.description:
        raise CapError("info needs an event and an areaDesc")
    cap_time(msg.sent)
    if msg.info.expires is not None:
        cap_time(msg.info.expires)
        if msg.info.expires <= msg.sent:
            raise CapError("expires must be after sent")
    for ref in msg.references:
        parts = ref.split(",")
        if len(parts) != 3 or not all(parts) or not _TIME_RE.match(parts[2]):
            raise CapError(f"reference must be sender,identifier,sent: {ref!r}")


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    el = ET.SubElement(parent, f"{{{CAP_NS}}}{tag}")
    if text is not None:
        el.text = text
    return el


def to_xml(msg: CapMessage) -> bytes:
    """Validate and serialise (element order as in the CAP 1.2 schema)."""
    validate(msg)
    root = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(root, "identifier", msg.identifier)
    _sub(root, "sender", msg.sender)
    _sub(root, "sent", cap_time(msg.sent))
    _sub(root, "status", msg.status)
    _sub(root, "msgType", msg.msg_type)
    _sub(root, "scope", msg.scope)
    if msg.restriction:
        _sub(root, "restriction", msg.restriction)
    for code in msg.codes:
        _sub(root, "code", code)
    if msg.note:
        _sub(root, "note", msg.note)
    if msg.references:
        _sub(root, "references", " ".join(msg.references))
    if msg.incidents:
        _sub(root, "incidents", msg.incidents)
    info = _sub(root, "info")
    i = msg.info
    _sub(info, "language", i.language)
    _sub(info, "category", i.category)
    _sub(info, "event", i.event)
    if i.response_type:
        _sub(info, "responseType", i.response_type)
    _sub(info, "urgency", i.urgency)
    _sub(info, "severity", i.severity)
    _sub(info, "certainty", i.certainty)
    if i.expires is not None:
        _sub(info, "expires", cap_time(i.expires))
    _sub(info, "senderName", i.sender_name)
    if i.headline:
        _sub(info, "headline", i.headline[:160])
    if i.description:
        _sub(info, "description", i.description)
    if i.instruction:
        _sub(info, "instruction", i.instruction)
    for name, value in i.parameters:
        p = _sub(info, "parameter")
        _sub(p, "valueName", name)
        _sub(p, "value", value)
    area = _sub(info, "area")
    _sub(area, "areaDesc", i.area.description)
    for name, value in i.area.geocodes:
        g = _sub(area, "geocode")
        _sub(g, "valueName", name)
        _sub(g, "value", value)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True, default_namespace=CAP_NS)


# -- incidents -> CAP ------------------------------------------------------------------------

def scope_of(incident: Incident) -> str:
    return "Restricted" if incident.type in RT_ONLY or incident.crime else "Public"


def status_of(incident: Incident, exercise: bool = False) -> str:
    if incident.type == IncidentType.TEST:
        return "Test"
    return "Exercise" if exercise else "Actual"


def _dt(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, WIB)


def area_of(node: Mapping[str, Any] | None) -> CapArea:
    if not node or node.get("kelurahan_code") is None:
        name = (node or {}).get("display_name") or (node or {}).get("node_id") or "unknown post"
        return CapArea(f"Pos ronda {name}")
    desc = (f"RT {int(node['rt']):03d} / RW {int(node['rw']):03d}, kelurahan "
            f"{node['kelurahan_code']}")
    if node.get("display_name"):
        desc = f"{node['display_name']}, {desc}"
    return CapArea(desc, (("KEMENDAGRI", str(node["kelurahan_code"])),))


def incident_messages(incident: Incident, history: Sequence[Mapping[str, Any]],
                      node: Mapping[str, Any] | None, *, sender: str, exercise: bool = False,
                      expires_hours: float = 6.0) -> list[CapMessage]:
    """The CAP messages of an incident so far: one per lifecycle step in ``history``."""
    out: list[CapMessage] = []
    refs: list[str] = []
    scope = scope_of(incident)
    restriction = None
    if scope == "Restricted":
        restriction = ("RT residents only" if incident.type in RT_ONLY
                       else "Police command centre staff only")
    status = status_of(incident, exercise)
    area = area_of(node)
    base_params = (("incident_id", incident.incident_id), ("node_id", incident.node_id),
                   ("priority", f"P{incident.priority}"),
                   ("time_quality", incident.time_quality or "unknown"))
    steps = [h for h in history if h["step"] in ("new", "acknowledged", "resolved",
                                                   "false_alarm")] or [
        {"step": "new", "at": incident.opened_at, "note": "", "actor": incident.node_id}]
    for n, h in enumerate(steps):
        step = str(h["step"])
        sent = _dt(max(float(h["at"]), incident.opened_at if n == 0 else 0.0))
        msg_type, response, urgency, certainty = "Alert", None, URGENCY[incident.priority], (
            "Observed" if incident.type != IncidentType.PANIC else "Likely")
        if step == "acknowledged":
            msg_type, response = "Update", "Monitor"
        elif step == "resolved":
            msg_type, response, urgency = "Update", "AllClear", "Past"
        elif step == "false_alarm":
            msg_type, response, urgency, certainty = "Cancel", "None", "Past", "Unlikely"
        ident = f"kentongan-{incident.incident_id}-{n}"
        info = CapInfo(
            category=CATEGORY.get(incident.type, "Other"),
            event=EVENT_TEXT.get(incident.type, incident.type), urgency=urgency,
            severity=SEVERITY[incident.priority], certainty=certainty, area=area,
            response_type=response, expires=sent + dt.timedelta(hours=expires_hours),
            headline=f"{EVENT_TEXT.get(incident.type, incident.type)} - {step}",
            description=f"Incident {incident.incident_id} at post {incident.node_id}: {step}"
                        + (f" ({h['note']})" if step != "new" and h.get("note") else ""),
            instruction=(f"Call {incident.info.show_number}" if incident.info.show_number
                         else ""),
            parameters=base_params)
        out.append(CapMessage(ident, sender, sent, status, msg_type, scope, info,
                              restriction=restriction, references=tuple(refs),
                              incidents=incident.incident_id))
        refs.append(f"{sender},{ident},{cap_time(sent)}")
    return out


def incident_xml(incident: Incident, history: Sequence[Mapping[str, Any]],
                 node: Mapping[str, Any] | None, *, sender: str, exercise: bool = False,
                 expires_hours: float = 6.0) -> bytes:
    """The latest CAP message of an incident as XML."""
    return to_xml(incident_messages(incident, history, node, sender=sender, exercise=exercise,
                                    expires_hours=expires_hours)[-1])
