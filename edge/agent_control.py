"""The post agent's control-socket operations (``edge.control``): ``status``
(``kentongan-edge status``), ``press`` (``sim press``, simulated posts only), ``record_selftest``
(the self-test's checklist as an event) and the updater's post-switch probes
(``edge.update.health``: ``update_health``, ``event_status``).

Apart from ``edge.agent``, which wires and runs the parts: these are requests from outside the
process, validated here (a ``ControlError`` is the client's answer, never a traceback).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from edge.control import Handler
from edge.errors import ControlError
from edge.incidents import Priority, SystemEvent
from edge.outbox import EventDraft, StoredEvent
from edge.update import health as update_health

if TYPE_CHECKING:
    from edge.agent import Agent

#: How long ``record_selftest`` waits for the event's commit before answering ``pending``.
SELFTEST_WAIT_S = 5.0


def control_handlers(agent: Agent) -> dict[str, Handler]:
    """The operations the agent's control socket serves."""
    ops = ControlOps(agent)
    return {
        "status": ops.status, "press": ops.press, "record_selftest": ops.record_selftest,
        # The updater's post-switch check (edge.update.health, docs/updates.md).
        "update_health": lambda req: update_health.agent_health(agent, req),
        "event_status": lambda req: update_health.event_status(agent, req),
    }


class ControlOps:
    """The agent-bound control operations (each takes the request and returns the answer)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    async def status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "status": await asyncio.to_thread(self.agent.status)}

    async def record_selftest(self, req: dict[str, Any]) -> dict[str, Any]:
        """Record a SELFTEST event. The answer is always true: ``stored`` (with its id) once it
        is committed, ``pending`` while the store cannot take it yet (it stays queued or kept
        for retry and will be stored), ``failed`` only when it was given up."""
        agent = self.agent
        payload = req.get("payload")
        if not isinstance(payload, dict) or agent.engine is None:
            raise ControlError("record_selftest needs a payload object")
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[StoredEvent | None] = loop.create_future()

        def done(ev: StoredEvent | None) -> None:  # on the loop (AlarmEngine._hop)
            if not outcome.done():
                outcome.set_result(ev)

        agent.engine.record(EventDraft(SystemEvent.SELFTEST.value, int(Priority.P4), payload),
                            on_outcome=done)
        try:
            ev = await asyncio.wait_for(asyncio.shield(outcome), SELFTEST_WAIT_S)
        except TimeoutError:
            return {"ok": True, "status": "pending", "storage": agent.storage_health(),
                    "detail": "not stored yet: the event is kept and will be stored when the "
                              "disk has room"}
        if ev is None:
            return {"ok": False, "status": "failed",
                    "error": "the event was given up (retry memory full)"}
        return {"ok": True, "status": "stored", "event_id": ev.event_id}

    async def press(self, req: dict[str, Any]) -> dict[str, Any]:
        agent = self.agent
        if agent.hw is None or agent.hw.simulated is None:
            raise ControlError("sim press needs an agent started with --simulate")
        name = req.get("button")
        hold = req.get("hold", 0.1)
        if not isinstance(name, str):
            raise ControlError("press needs a button name")
        if not isinstance(hold, int | float) or not 0 <= hold <= 60:
            raise ControlError("hold must be a number of seconds between 0 and 60")
        agent.hw.simulated.button(name)  # unknown names fail before anything is driven
        await asyncio.to_thread(agent.hw.simulated.press, name, float(hold))
        await asyncio.sleep(0.05)
        return {"ok": True, "button": name, "hold": hold, "siren": agent.siren_status()}
