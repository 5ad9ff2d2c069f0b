"""The web process's supervision task: every ``sweep_s`` it reads central's sight, sweeps post
outages (``central_sync.supervision``) and claims due P1 escalations (``central_sync.escalation``),
then hands any incident change to the live stream. Every web process runs it; the store makes
each opening happen once (see those modules), so no process is special and none is a single point
of failure."""

from __future__ import annotations

import asyncio
import logging

from central_sync.web.desk import Desk
from edge.logs import log_event

log = logging.getLogger("central.web.supervision")


def sweep_once(desk: Desk) -> bool:
    """One sweep and one escalation claim (worker thread); True when an incident changed."""
    result = desk.supervisor.sweep(posts=desk.posts.view())
    claimed = desk.escalator.claim_due()
    for incident in claimed:
        node = desk.posts.get(incident.node_id) or {}
        name = str(node.get("display_name") or incident.node_id)
        desk.spawn(desk.escalator.deliver_all(incident, name))
    return bool(result.incidents or result.restored or claimed)


async def run_supervision(desk: Desk) -> None:
    """Until cancelled. A failing sweep (database away) is logged once per streak and retried."""
    period = desk.settings.supervision.sweep_s
    failing = False
    while True:
        try:
            changed = await asyncio.to_thread(sweep_once, desk)
            if changed:
                await asyncio.to_thread(desk.publish_changes)
            failing = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not failing:
                log_event(log, "supervision_sweep_failed", logging.WARNING, error=str(exc)[:200])
            failing = True
        await asyncio.sleep(period)
