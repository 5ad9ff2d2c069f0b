"""The hot-path economies of ingest keep their meaning: node updates wait (with their PUBACKs)
until they are due, ``payload_suspect`` flags exactly what the single pattern it replaced
flagged. (``Link.flush``, the corked write of a batch's Acks and PUBACKs, is what delivers every
Ack in the broker tests of ``tests/test_ingest.py``.)"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path

import paho.mqtt.client as paho
from hypothesis import given, settings
from hypothesis import strategies as st

from central_sync.acks import AckWindow, Delivery, Link
from central_sync.config import IngestConfig
from central_sync.ingest_commit import EventMsg
from central_sync.ingest_decode import payload_suspect
from central_sync.ingest_queue import IngestQueue
from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import MQTT_LOGGER, make_client
from edge.sync.transport import paho_client
from edge.sync.wire import Heartbeat, Presence
from tests.test_ingest import make_cfg

#: The one pattern ``payload_suspect`` used to search (kept here as the reference).
_OLD = re.compile(rb"\\u[dD][89a-fA-F]|[0-9]{19}|NaN|Infinity|[eE][+-]?[0-9]{3}")


def _old_suspect(payload: bytes) -> bool:
    if _OLD.search(payload) is not None:
        return True
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"\\ud8", b"\\uD9", b"\\u00e9", b"1234567890", b"123456789", b"NaN", b"Infinity",
                                 b"-Infinity", b"e+308", b"E-12", b"e123", b"\xed\xa0\x80", b"\xff", b'"a":',
                                 b"{", b"}", b"x", b"0"]), max_size=12))
def test_payload_suspect_flags_what_the_single_pattern_flagged(parts: list[bytes]) -> None:
    payload = b"".join(parts)
    assert payload_suspect(payload) == _old_suspect(payload)


def _link() -> Link:
    return Link("test", paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5), AckWindow(10))


def test_node_updates_and_their_pubacks_wait_until_due() -> None:
    async def scenario() -> None:
        queue = IngestQueue(IngestConfig())
        stats = IngestStats()
        link = _link()
        presence = Presence(node_id="node-a", state="online", boot_id="b1", version="1", at=time.time())
        beat = Heartbeat(node_id="node-b", boot_id="b1", at=time.time(), version="1", time_quality="synced")
        queue.presences["node-a"] = presence
        queue.settle_nodes.append(Delivery(link, 7, 1))
        queue.heartbeats["node-b"] = beat
        queue.add_events(EventMsg("kentongan/v1/up/node-c/event", "node-c", [], Delivery(link, 8, 1)))
        queue.wake.set()

        batch, settle, _acks = queue.take(stats, nodes=False)
        assert batch.presences == [] and batch.heartbeats == []
        assert [d.mid for d in settle] == [8]  # the presence's PUBACK waits for its write
        assert queue.has_node_updates() and not queue.has_work(nodes=False)
        assert not queue.wake.is_set()  # nothing else to do: no spinning batcher

        batch, settle, _acks = queue.take(stats)
        assert batch.presences == [presence] and batch.heartbeats == [beat]
        assert [d.mid for d in settle] == [7]
        assert not queue.has_work()

    asyncio.run(scenario())



def test_paho_logs_only_when_central_mqtt_debug_is_on(tmp_path: Path) -> None:
    """paho's per-packet debug calls cost ~1 us each with a logger attached (aiomqtt always
    attaches one): central's clients drop it unless ``central_sync.mqtt`` logs at DEBUG."""
    cfg = make_cfg(tmp_path, 1883)

    async def paho_logger() -> logging.Logger | None:
        client, _buffer = make_client(cfg, "central-log")
        return paho_client(client).logger

    assert not MQTT_LOGGER.isEnabledFor(logging.DEBUG)
    assert asyncio.run(paho_logger()) is None
    level = MQTT_LOGGER.level
    MQTT_LOGGER.setLevel(logging.DEBUG)
    try:
        assert asyncio.run(paho_logger()) is MQTT_LOGGER
    finally:
        MQTT_LOGGER.setLevel(level)
