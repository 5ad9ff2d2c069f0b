"""Publishing many commands at once (a group siren activation: up to a whole city's posts).

``publish_batch`` signs every command in a worker thread (one pass, no event-loop stall), has the
caller record them all in ONE store transaction, then calls paho's ``publish`` once per command
(QoS 1) without awaiting each PUBACK: at most ``window`` are unconfirmed at a time, so paho never
parks the rest in its out-queue (which it rescans on every PUBACK). The broker keeps each command
for its post's persistent session; what a post answers comes back through ingest like any other
command result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import aiomqtt
import paho.mqtt.client as paho

from central_sync.errors import CentralError
from edge.errors import WireError
from edge.logs import log_event
from edge.sync.transport import paho_client
from edge.sync.wire import Command, Topics, encode

log = logging.getLogger("central_sync.command_batch")

#: QoS 1 commands of one batch not yet confirmed by the broker (below paho's in-flight limit).
COMMAND_WINDOW = 100
#: How long the last window's PUBACKs may take before the batch is reported unconfirmed.
CONFIRM_TIMEOUT_S = 30.0
#: How often a full window is looked at again.
WINDOW_POLL_S = 0.002

Record = Callable[[list[Command]], None]


def _sign_all(sign: Callable[[Command], Command] | None,
              cmds: Sequence[Command]) -> list[tuple[Command, bytes]]:
    out = []
    for cmd in cmds:
        signed = sign(cmd) if sign is not None else cmd
        try:
            out.append((signed, encode(signed)))
        except WireError as exc:
            raise CentralError(f"command {cmd.command_id} is invalid: {exc}") from None
    return out


async def publish_batch(client: aiomqtt.Client | None, topics: Topics,
                        sign: Callable[[Command], Command] | None, cmds: Sequence[Command],
                        record: Record, *, window: int = COMMAND_WINDOW) -> list[Command]:
    """Sign, record (``record(signed)`` in a thread) and publish ``cmds``; return them signed.
    ``CentralError`` when not connected (nothing recorded then) or when the link drops midway."""
    if client is None:
        raise CentralError(f"cannot send {len(cmds)} command(s): not connected to the broker")
    if not cmds:
        return []
    started = time.monotonic()
    bodies = await asyncio.to_thread(_sign_all, sign, cmds)
    signed = [c for c, _b in bodies]
    sign_s = time.monotonic() - started
    await asyncio.to_thread(record, signed)
    record_s = time.monotonic() - started - sign_s
    pc = paho_client(client)
    pending: deque[paho.MQTTMessageInfo] = deque()
    sent = 0
    for cmd, body in bodies:
        while True:
            while pending and pending[0].is_published():
                pending.popleft()
            if len(pending) < window:
                break
            await asyncio.sleep(WINDOW_POLL_S)
        info = pc.publish(topics.down(cmd.node_id, "cmd"), body, qos=1)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise CentralError(f"{len(bodies) - sent} command(s) not published: "
                               f"{paho.error_string(info.rc)}")
        pending.append(info)
        sent += 1
    # The last window's PUBACKs: return once the broker holds every command (a caller that then
    # disconnects loses none), or say how many it never confirmed.
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S
    while pending:
        while pending and pending[0].is_published():
            pending.popleft()
        if not pending:
            break
        if time.monotonic() > deadline:
            raise CentralError(f"{len(pending)} of {sent} command(s) not confirmed by the broker "
                               f"within {CONFIRM_TIMEOUT_S:.0f} s")
        await asyncio.sleep(WINDOW_POLL_S)
    log_event(log, "commands_published", count=sent, action=signed[0].action, sign_s=round(sign_s, 3),
              record_s=round(record_s, 3), publish_s=round(time.monotonic() - started - sign_s - record_s, 3))
    return signed
