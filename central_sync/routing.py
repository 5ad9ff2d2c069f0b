"""Who is told about an incident, and the commands that tell them (from INCIDENTS audiences).

- Crime types (and types whose audience includes the RW, such as fire and disaster) go to the
  command-centre queue and send a warning ``sound`` command to the *other* posts of the same RW,
  with a pattern configurable per RW (``web.rw_warning_patterns``, key "KELURAHAN/RW" or "*").
- Non-crime notices (LELAYU, KUMPUL) go to the RT only: never to the operator queue.
- RT admins may send a notice (LELAYU, KUMPUL, AMAN) to their own RT's posts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from central_sync.incidents import SYSTEM_INCIDENTS, Incident
from edge.incidents import INCIDENTS, RT_ONLY, Audience, IncidentType
from edge.sync.wire import Command

#: What an RT admin may sound at their own posts from the dashboard.
RT_NOTICE_TYPES = frozenset({IncidentType.LELAYU, IncidentType.KUMPUL, IncidentType.AMAN})


def default_warning_types() -> frozenset[str]:
    return frozenset(
        t.value for t, info in INCIDENTS.items()
        if info.crime or Audience.RW in info.audience)


def to_command_centre(incident_type: str) -> bool:
    """Does this type belong in the operators' queue? RT-only notices never do."""
    if incident_type in SYSTEM_INCIDENTS:
        return True
    try:
        info = INCIDENTS[IncidentType(incident_type)]
    except ValueError:
        return False
    if incident_type in RT_ONLY:
        return False
    return Audience.COMMAND_CENTRE in info.audience or incident_type == IncidentType.TEST


def make_command(node_id: str, action: str, params: dict[str, Any], *, issuer: str,
                 ttl_s: float = 300.0) -> Command:
    now = time.time()
    return Command(command_id=uuid.uuid4().hex, node_id=node_id, action=action,
                   params=params, issued_at=now, expires_at=now + ttl_s, issuer=issuer[:80])


def _get(node: Any, key: str) -> Any:
    return node.get(key) if isinstance(node, Mapping) else getattr(node, key, None)


class Router:
    """Routing rules with their configuration."""

    def __init__(self, *, warning_types: Iterable[str] | None = None,
                 rw_patterns: Mapping[str, str] | None = None, ttl_s: float = 300.0) -> None:
        self.warning_types = (frozenset(warning_types) if warning_types is not None
                              else default_warning_types())
        self.rw_patterns = dict(rw_patterns or {})
        self.ttl_s = ttl_s

    def warning_pattern(self, kelurahan_code: str, rw: int, incident_type: str) -> str:
        return (self.rw_patterns.get(f"{kelurahan_code}/{rw}")
                or self.rw_patterns.get("*")
                or INCIDENTS[IncidentType(incident_type)].pattern)

    def rw_warnings(self, incident: Incident, nodes: Iterable[Any]) -> list[Command]:
        """``sound`` commands for the other posts of the incident's RW (none if not warned)."""
        if incident.type not in self.warning_types:
            return []
        by_id = {_get(n, "node_id"): n for n in nodes}
        origin = by_id.get(incident.node_id)
        if origin is None or _get(origin, "kelurahan_code") is None or _get(origin, "rw") is None:
            return []
        kel, rw = _get(origin, "kelurahan_code"), int(_get(origin, "rw"))
        pattern = self.warning_pattern(kel, rw, incident.type)
        return [
            make_command(
                node_id, "sound",
                {"incident_type": incident.type, "pattern": pattern, "reason": "rw_warning",
                 "incident_id": incident.incident_id, "source_node": incident.node_id},
                issuer="central:routing", ttl_s=self.ttl_s)
            for node_id, n in sorted(by_id.items())
            if node_id != incident.node_id and _get(n, "kelurahan_code") == kel
            and _get(n, "rw") is not None and int(_get(n, "rw")) == rw
        ]

    def rt_notice(self, node_id: str, incident_type: str, issued_by: str) -> Command:
        if incident_type not in RT_NOTICE_TYPES:
            raise ValueError(f"{incident_type} is not an RT notice")
        return make_command(node_id, "sound", {"incident_type": incident_type,
                                               "operator": issued_by},
                            issuer=f"web:{issued_by}", ttl_s=self.ttl_s)
