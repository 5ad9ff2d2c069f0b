"""The post overview: every visible post with its health, grouped by kelurahan / RW / RT (the
place from the enrolment registry), and for admins the posts whose messages claimed another
place (``security_events``, recorded by ``central_sync.place_check``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from central_sync.release.overview import RolloutOverview, read_overview
from central_sync.store import Row
from central_sync.users import Role
from central_sync.web.auth import Principal
from central_sync.web.policy import can_see_node

if TYPE_CHECKING:  # context.py imports this module (through body_cache and post_json)
    from central_sync.web.context import WebContext


def _jsonish(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def rollout_overview(ctx: WebContext) -> RolloutOverview | None:
    """The rollout state when central has a release directory with a rollout (else None)."""
    d = ctx.settings.release_dir
    return read_overview(Path(d)) if d else None


def _update_state(ro: RolloutOverview | None, node_id: str,
                  version: str | None) -> dict[str, Any] | None:
    if ro is None:
        return None
    u = ro.post(node_id, version)
    return {"state": u.state, "version": u.report_version or ro.version,
            "target": ro.version, "reason": u.reason, "running": u.running_version}


def place_text(text: Any) -> str:
    """A stored place claim (``{"kelurahan_code", "rw", "rt"}`` JSON) as "KEL RW n RT n"."""
    try:
        place = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        place = {}
    if not isinstance(place, dict):
        place = {}
    parts = [str(place["kelurahan_code"])] if place.get("kelurahan_code") is not None else []
    parts += [f"{k.upper()} {place[k]}" for k in ("rw", "rt") if place.get(k) is not None]
    return " ".join(parts)[:120] or "-"


def security_events(ctx: WebContext, who: Principal) -> list[dict[str, Any]]:
    """Posts whose presence claimed another place than their enrolment (admins only; others
    get nothing). One row per post and kind, with how many times and when last."""
    if who.user.role is not Role.ADMIN:
        return []
    nodes = ctx.desk.nodes()
    out = []
    for r in ctx.store.registry_tables().security_events():
        node = nodes.get(str(r["node_id"])) or {}
        out.append({"node_id": r["node_id"], "kind": r["kind"],
                    "display_name": node.get("display_name") or r["node_id"],
                    "claimed": place_text(r["claimed"]), "registered": place_text(r["registered"]),
                    "count": int(r["count"]), "first_at": r["first_at"], "last_at": r["last_at"]})
    return out


def post_row(node_id: str, n: Row, status: str, tests: Mapping[str, float], siren_passed: Mapping[str, float],
             siren_faults: Mapping[str, float], rollout: RolloutOverview | None = None) -> dict[str, Any]:
    """One post of the overview (``post_rows``, and ``post_json`` one row at a time)."""
    return {
        "node_id": node_id,
        "display_name": n.get("display_name") or node_id,
        "kelurahan_code": n.get("kelurahan_code"), "rw": n.get("rw"), "rt": n.get("rt"),
        "online": bool(n.get("online")), "last_seen": n.get("last_seen"),
        "backlog": n.get("backlog"), "siren": _jsonish(n.get("siren")),
        "time_quality": n.get("time_quality"), "status": status,
        "last_self_test": n.get("last_self_test") or tests.get(node_id),
        "siren_test_pass": siren_passed.get(node_id), "siren_fault": siren_faults.get(node_id),
        "version": n.get("version"),
        # not "update": Jinja would find the dict method first
        "update_state": _update_state(rollout, node_id, n.get("version")),
    }


def order_key(row: Mapping[str, Any]) -> tuple[str, int, int, str]:
    """The overview's order: kelurahan, RW, RT, name (posts without a place last)."""
    return (str(row.get("kelurahan_code") or "~"), row.get("rw") or 0, row.get("rt") or 0,
            str(row.get("display_name") or row.get("node_id")))


def event_times(ctx: WebContext) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Per post: its last SELFTEST (the technician's ``kentongan-edge selftest``), SIREN_TEST
    (its own siren test passed) and SIREN_FAULT (failed) times."""
    store = ctx.store
    return (store.last_event_times("SELFTEST"), store.last_event_times("SIREN_TEST"),
            store.last_event_times("SIREN_FAULT"))


def post_rows(ctx: WebContext, who: Principal,
              rollout: RolloutOverview | None = None) -> list[dict[str, Any]]:
    tests, siren_passed, siren_faults = event_times(ctx)
    rows = [post_row(node_id, n, str(n.get("status")), tests, siren_passed, siren_faults, rollout)
            for node_id, n in ctx.desk.nodes().items() if can_see_node(who.user, n)]
    rows.sort(key=order_key)
    return rows
