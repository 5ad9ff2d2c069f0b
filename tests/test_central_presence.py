"""Central presence (Sparkplug-style retained online/offline) as the post sees it: idle window
while no central is online, resend at once when one comes online, jittered ack-timeout backoff,
SMS fallback whatever the cause. Real Mosquitto, real central (IngestService + CentralStore)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from helpers_sync import PahoAcker, SmsRecorder, node_config, running_service, wait_until
from test_sync_e2e import Central

from central_sync.broker import LocalMosquitto
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.sync.presence import CentralPresence
from edge.sync.service import SyncService
from edge.sync.wire import CentralState, Topics, encode

NODE = "pos-rt03"
TOPICS = Topics()
RECIPIENTS = [{"name": "Ketua RT", "number": "+6281200000001"}]


def _state(cid: str, state: str) -> bytes:
    return encode(CentralState(central_id=cid, state=state, at=time.time()))  # type: ignore[arg-type]


def test_presence_rules() -> None:
    p = CentralPresence(TOPICS)
    assert p.present and not p.seen  # never seen: behave as before presence existed
    assert p.on_message(TOPICS.central_state("c-w0"), _state("c-w0", "offline")) is False
    assert not p.present and p.seen
    assert p.on_message(TOPICS.central_state("c-w0"), _state("c-w0", "online")) is True
    assert p.on_message(TOPICS.central_state("c-w1"), _state("c-w1", "online")) is None
    assert p.on_message(TOPICS.central_state("c-w0"), _state("c-w0", "offline")) is None
    assert p.present and p.online == ["c-w1"]  # one online central is enough
    assert p.on_message(TOPICS.central_state("c-w1"), b"") is False  # retained state cleared
    assert not p.present
    # garbage, a mismatched id or a foreign topic changes nothing
    assert p.on_message(TOPICS.central_state("c-w2"), b"{not json") is None
    assert p.on_message(TOPICS.central_state("c-w2"), _state("c-w9", "online")) is None
    assert p.on_message("kentongan/v1/central/state/a/b", _state("a", "online")) is None
    assert not p.present
    # first sighting already online counts as an arrival (resend what central may have missed)
    q = CentralPresence(TOPICS)
    assert q.on_message(TOPICS.central_state("c"), _state("c", "online")) is True


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db", NODE, clock=Clock(forced_quality="synced"))
    yield ob
    ob.close()


def _service(port: int, outbox: Outbox, sender: Any = None, **sync: Any) -> SyncService:
    if sender is not None:
        sync["modem"] = {"enabled": True, "port": "/dev/null", "sms_recipients": RECIPIENTS}
    svc = SyncService(node_config(port, NODE, **sync), outbox, snapshots=None,
                      clock=outbox.clock, status_provider=lambda: {}, command_handler=None,
                      sms_sender=sender)
    svc.sms.check_s = 0.1
    return svc


def test_panic_before_centrals_first_subscription_is_acked_right_after_central_is_up(
        tmp_path: Path, mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    """The broker drops the PANIC (nobody subscribed yet); central's ``online`` state makes the
    post resend at once instead of after the ack timeout (10 minutes here)."""
    svc = _service(mosquitto.port, outbox, ack_timeout_seconds=600)
    central = Central(tmp_path / "central.db", mosquitto.port)
    try:
        with running_service(svc):
            wait_until(lambda: svc.connected, 20, what="post connected")
            panic = outbox.record(EventDraft("PANIC", 1, {"button": "utama"}))
            wait_until(lambda: svc.stats.published >= 1, 10, what="PANIC published into the void")
            assert not svc.presence.seen
            central.start()
            central.wait_connected()
            up = time.monotonic()
            wait_until(lambda: outbox.counts()["acked"] >= 1, 60, what="PANIC acked")
            took = time.monotonic() - up
            assert central.store.get_event(panic.event_id) is not None
            assert svc.stats.central_resends >= 1 and svc.stats.ack_timeouts == 0
            assert took < 30, took  # far below the ack timeout; bench/central_outage.py measures it
            assert svc.status()["central"]["online"] == ["central-test"]
    finally:
        central.close()


def test_sms_when_broker_is_up_but_no_central_is_online(
        tmp_path: Path, mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    rec = SmsRecorder()
    central = Central(tmp_path / "central.db", mosquitto.port)
    central.start()
    central.wait_connected()
    svc = _service(mosquitto.port, outbox, rec, sms_fallback_seconds=1.0)
    try:
        with running_service(svc):
            wait_until(lambda: svc.presence.seen and svc.presence.present, 20, what="central seen")
            central.stop()  # a clean stop publishes the retained offline state
            wait_until(lambda: not svc.presence.present, 10, what="central offline seen")
            published = svc.stats.published
            outbox.record(EventDraft("PANIC", 1, {"button": "utama"}, incident_id="inc-7"))
            wait_until(lambda: len(rec.sent) == 1, 15, what="SMS while central is away")
            assert svc.connected  # the broker was there the whole time
            assert svc.stats.published == published  # idle window: the PANIC waited locally
            assert "pusat tidak aktif" in rec.sent[0][1] and "PANIC" in rec.sent[0][1]
            central.start()
            central.wait_connected()
            wait_until(lambda: outbox.counts()["ready"] == 0 and outbox.counts()["in_flight"] == 0,
                       30, what="PANIC and SMS_SENT acked once central is back")
    finally:
        central.close()


def test_ack_overdue_backs_off_with_jitter_and_sends_sms(mosquitto: LocalMosquitto,
                                                       outbox: Outbox) -> None:
    """A central that is 'online' but never acks: ack timeouts back off (fewer and fewer resend
    rounds, jittered), the P1 gets its SMS ('ack overdue'), and one ack resets the backoff."""
    rec = SmsRecorder()
    acker = PahoAcker(mosquitto.port, ack=False)
    state = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fake-central",
                        protocol=paho.MQTTv5)
    state.connect("127.0.0.1", mosquitto.port)
    state.loop_start()
    state.publish(TOPICS.central_state("fake"), _state("fake", "online"), qos=1,
                  retain=True).wait_for_publish(5)
    svc = _service(mosquitto.port, outbox, rec, ack_timeout_seconds=0.4, sms_fallback_seconds=1.5)
    try:
        with running_service(svc):
            outbox.record(EventDraft("PANIC", 1, {"button": "utama"}))
            wait_until(lambda: len(rec.sent) == 1, 15, what="SMS for the overdue ack")
            assert "belum dikonfirmasi" in rec.sent[0][1]
            wait_until(lambda: svc.stats.ack_timeouts >= 3, 15, what="three timeout rounds")
            t = svc.events.current_timeout_s
            assert 0.4 * 8 <= t <= 0.4 * 8 * 1.25  # capped at 2**3 doublings, jittered
            # With a fixed 0.4 s timeout there would be ~12 rounds in 5 s; backoff allows ~4.
            rounds = svc.stats.ack_timeouts
            time.sleep(5.0)
            assert svc.stats.ack_timeouts - rounds <= 3
            acker.ack = True  # central recovers: the next resend is acked and resets the backoff
            wait_until(lambda: outbox.counts()["ready"] == 0 and outbox.counts()["in_flight"] == 0,
                       30, what="acked after recovery")
            assert svc.events.current_timeout_s <= 0.4 * 1.25
    finally:
        state.publish(TOPICS.central_state("fake"), b"", qos=1, retain=True).wait_for_publish(5)
        state.loop_stop()
        state.disconnect()
        acker.close()
