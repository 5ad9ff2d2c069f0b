"""Who may see what: the role boundaries of the command-centre app.

- admin: everything.
- operator (police): every incident except RT-only notices (LELAYU, KUMPUL); all posts.
- rt_admin: only their own RTs' non-crime incidents and their own RTs' posts, and never a
  reporter's identity (payload fields such as reporter/operator/phone are stripped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from central_sync.incidents import Incident
from central_sync.personal_data import PERSONAL_KEYS, is_personal_key
from central_sync.routing import to_command_centre
from central_sync.users import Role, User

__all__ = ["PERSONAL_KEYS", "can_command_posts", "can_see_incident", "can_see_node", "is_personal_key", "node_location",
           "redact"]


def redact(user: User, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload as this user may see it."""
    if user.is_staff:
        return dict(payload)
    return {k: (redact(user, v) if isinstance(v, Mapping) else v)
            for k, v in payload.items() if not is_personal_key(k)}


def node_location(node: Mapping[str, Any] | None) -> tuple[str | None, int | None, int | None]:
    if not node:
        return None, None, None
    rw, rt = node.get("rw"), node.get("rt")
    return node.get("kelurahan_code"), (int(rw) if rw is not None else None), (
        int(rt) if rt is not None else None)


def can_see_node(user: User, node: Mapping[str, Any] | None) -> bool:
    if user.is_staff:
        return True
    return user.covers(*node_location(node))


def can_see_incident(user: User, incident: Incident, node: Mapping[str, Any] | None) -> bool:
    if user.role is Role.ADMIN:
        return True
    if user.role is Role.OPERATOR:
        return to_command_centre(incident.type)
    return (not incident.crime) and user.covers(*node_location(node))


def can_command_posts(user: User) -> bool:
    """Test chirp and stop siren: operators and admins only."""
    return user.is_staff
