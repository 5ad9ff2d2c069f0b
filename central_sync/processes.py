"""The processes central runs as (docs/scale.md):

* ``kentongan-central run``: ingest + web in one process (small installs, the demo);
* ``kentongan-central ingest --worker-id N``: one ingest worker, any number of them, each with
  its own MQTT client id ``<broker.client_id>-<N>``, all in ONE MQTT 5 shared-subscription group
  (``ingest.shared_group``, default ``kentongan-ingest``), so the broker splits the posts' load;
* ``kentongan-central ingest --lane p1``: the P1 lane alone (``central_sync.ingest_p1.P1Process``),
  with the workers started ``--lane bulk``, so a backlog cannot delay an alarm's Ack for CPU;
* ``kentongan-central web``: the dashboard, reading the database. The desk follows what the
  ingest workers commit through the store's change feed (PostgreSQL LISTEN/NOTIFY, SQLite
  polling) and publishes its commands over its own broker connection (``CommandPublisher``),
  which subscribes to nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

import aiomqtt

from central_sync.command_batch import Record, publish_batch
from central_sync.config import CentralConfig
from central_sync.errors import CentralError
from central_sync.mqtt_central import Backoff, connect_spec
from central_sync.store import Store
from edge.errors import WireError
from edge.logs import log_event
from edge.sync import transport
from edge.sync.wire import Command, Topics, encode

log = logging.getLogger("central_sync.processes")

#: Shared-subscription group of ``kentongan-central ingest`` when the config names none.
DEFAULT_SHARED_GROUP = "kentongan-ingest"

async def publish_command(client: aiomqtt.Client | None, store: Store, topics: Topics,
                          sign: Callable[[Command], Command] | None, cmd: Command, *, issued_by: str) -> None:
    """Sign (if configured), record and publish a command (QoS 1); ``CentralError`` if offline."""
    if client is None:
        raise CentralError(f"cannot send command {cmd.command_id}: not connected to the broker")
    if sign is not None:
        cmd = sign(cmd)
    try:
        body = encode(cmd)
    except WireError as exc:
        raise CentralError(f"command {cmd.command_id} is invalid: {exc}") from None
    await asyncio.to_thread(store.record_command, cmd, issued_by=issued_by)
    try:
        await client.publish(topics.down(cmd.node_id, "cmd"), body, qos=1)
    except aiomqtt.MqttError as exc:
        raise CentralError(f"command {cmd.command_id} not published: {exc}") from None
    log_event(log, "command_published", node_id=cmd.node_id, command_id=cmd.command_id, action=cmd.action,
              issued_by=issued_by)


class CommandPublisher:
    """The web process's broker connection: ``send_command`` like ``IngestService``'s."""

    def __init__(self, cfg: CentralConfig, store: Store, *, sign_command: Callable[[Command], Command] | None,
                 client_id: str) -> None:
        self.cfg, self.store, self.sign_command = cfg, store, sign_command
        self.topics = Topics(cfg.topic_prefix)
        self.client_id = client_id
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None

    async def run(self) -> None:
        backoff = Backoff(self.cfg.broker.reconnect_min_seconds, self.cfg.broker.reconnect_max_seconds)
        spec = dataclasses.replace(connect_spec(self.cfg, self.client_id), clean_start=True, session_expiry_s=0)
        while True:
            try:
                async with transport.session(transport.make_client(spec)) as client:
                    self._client = client
                    self.connected.set()
                    backoff.reset()
                    log_event(log, "web_broker_connected", client_id=self.client_id)
                    async for _message in client.messages:  # subscribed to nothing: raises when the link drops
                        pass
            except aiomqtt.MqttError as exc:
                log_event(log, "web_broker_disconnected", logging.WARNING, error=str(exc)[:200])
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(backoff.next_delay())

    async def send_command(self, cmd: Command, *, issued_by: str) -> None:
        await publish_command(self._client, self.store, self.topics, self.sign_command, cmd, issued_by=issued_by)

    async def send_commands(self, cmds: Sequence[Command], *, record: Record) -> list[Command]:
        """Many commands at once (``central_sync.command_batch``)."""
        return await publish_batch(self._client, self.topics, self.sign_command, cmds, record)
