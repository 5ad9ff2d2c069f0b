"""Incident types, priorities, audiences and default kentongan patterns (from shared/DOMAIN.md).

These are defaults: an RT overrides patterns in its node config (``siren.patterns``) because
there is no national kentongan standard.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class Priority(IntEnum):
    """Lower number is more urgent. P1 events go ahead of any backlog."""

    P1 = 1
    P2 = 2
    P3 = 3
    P4 = 4


class IncidentType(StrEnum):
    """What a button, an operator or an RT admin can raise."""

    PANIC = "PANIC"
    PEMBUNUHAN = "PEMBUNUHAN"
    PERAMPOKAN = "PERAMPOKAN"
    PENCURIAN = "PENCURIAN"
    KEBAKARAN = "KEBAKARAN"
    BENCANA = "BENCANA"
    PENCURIAN_HEWAN = "PENCURIAN_HEWAN"
    LAKA_LANTAS = "LAKA_LANTAS"
    KERIBUTAN = "KERIBUTAN"
    LELAYU = "LELAYU"
    KUMPUL = "KUMPUL"
    PATROLI = "PATROLI"
    AMAN = "AMAN"
    TEST = "TEST"


class Audience(StrEnum):
    """Who is notified of an incident type."""

    COMMAND_CENTRE = "command_centre"
    RT = "rt"
    RW = "rw"
    KELURAHAN = "kelurahan"
    LOG_ONLY = "log_only"


class SystemEvent(StrEnum):
    """Events the node itself records (not raised by a person)."""

    TAMPER = "TAMPER"
    BUTTON_SILENT = "BUTTON_SILENT"
    SIREN_STOPPED = "SIREN_STOPPED"
    SIREN_MAX_ON = "SIREN_MAX_ON"
    SIREN_FAULT = "SIREN_FAULT"
    SIREN_TEST = "SIREN_TEST"  # a passed siren self-test (a failed one is a SIREN_FAULT)
    CAMERA_FAULT = "CAMERA_FAULT"
    MODEM_FAULT = "MODEM_FAULT"
    STORAGE_QUARANTINED = "STORAGE_QUARANTINED"
    STORAGE_DEGRADED = "STORAGE_DEGRADED"
    EVICTION = "EVICTION"
    SMS_SENT = "SMS_SENT"
    COMMAND = "COMMAND"
    SECURITY = "SECURITY"
    INCIDENT_ACK = "INCIDENT_ACK"
    BOOT = "BOOT"
    SELFTEST = "SELFTEST"


@dataclass(frozen=True, slots=True)
class IncidentInfo:
    """Defaults for one incident type."""

    pattern: str
    priority: Priority
    audience: tuple[Audience, ...]
    crime: bool
    show_number: str | None = None


CC, RT, RW, KEL, LOG = (
    Audience.COMMAND_CENTRE,
    Audience.RT,
    Audience.RW,
    Audience.KELURAHAN,
    Audience.LOG_ONLY,
)

INCIDENTS: dict[IncidentType, IncidentInfo] = {
    IncidentType.PANIC: IncidentInfo("titir", Priority.P1, (CC, RT), crime=True),
    IncidentType.PEMBUNUHAN: IncidentInfo("titir", Priority.P1, (CC, RT, RW), crime=True),
    IncidentType.PERAMPOKAN: IncidentInfo("2-2-2", Priority.P1, (CC, RT, RW), crime=True),
    # P1 while in progress (a button press is, by definition), else P2.
    IncidentType.PENCURIAN: IncidentInfo("2-2-2", Priority.P1, (CC, RT), crime=True),
    IncidentType.KEBAKARAN: IncidentInfo("3-3-3", Priority.P1, (RT, RW, CC), crime=False,
                                         show_number="113"),
    IncidentType.BENCANA: IncidentInfo("3.1-3.1", Priority.P1, (RT, RW, KEL, CC), crime=False),
    IncidentType.PENCURIAN_HEWAN: IncidentInfo("5-5", Priority.P2, (CC, RT), crime=True),
    IncidentType.LAKA_LANTAS: IncidentInfo("1.3-1.3", Priority.P2, (CC, RT), crime=False,
                                           show_number="118/119"),
    IncidentType.KERIBUTAN: IncidentInfo("2.3-2.3", Priority.P2, (CC, RT, RW), crime=True),
    IncidentType.LELAYU: IncidentInfo("doro muluk", Priority.P3, (RT,), crime=False),
    IncidentType.KUMPUL: IncidentInfo("1-1-1-1", Priority.P4, (RT,), crime=False),
    IncidentType.PATROLI: IncidentInfo("silent", Priority.P4, (LOG,), crime=False),
    IncidentType.AMAN: IncidentInfo("1 x1", Priority.P4, (RT,), crime=False),
    IncidentType.TEST: IncidentInfo("chirp", Priority.P4, (LOG,), crime=False),
}

#: Notices that never go to the police.
RT_ONLY = frozenset({IncidentType.LELAYU, IncidentType.KUMPUL})


def priority_of(kind: str) -> Priority:
    """Default priority of an incident type or system event name."""
    try:
        return INCIDENTS[IncidentType(kind)].priority
    except ValueError:
        pass
    if kind in (SystemEvent.TAMPER, SystemEvent.SIREN_FAULT, SystemEvent.SECURITY):
        return Priority.P2
    if kind in (SystemEvent.STORAGE_QUARANTINED, SystemEvent.STORAGE_DEGRADED,
                SystemEvent.CAMERA_FAULT,
                SystemEvent.MODEM_FAULT, SystemEvent.SIREN_MAX_ON, SystemEvent.EVICTION,
                SystemEvent.BUTTON_SILENT):
        return Priority.P3
    return Priority.P4
