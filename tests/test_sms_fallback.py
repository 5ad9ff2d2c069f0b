"""SMS fallback: P1 unacknowledged while the broker is unreachable -> one SMS per incident, through
the real modem driver talking to a FakeModem on a pty (or a recording sender)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_sync import PahoAcker, SmsRecorder, node_config, running_service, wait_until

from central_sync.broker import LocalMosquitto, free_port
from edge.clock import Clock
from edge.drivers.fake_modem import FakeModem
from edge.drivers.modem import Modem
from edge.outbox import EventDraft, Outbox
from edge.sync.service import SyncService

NODE = "pos-rt03"
RECIPIENTS = [{"name": "Ketua RT", "number": "+6281200000001"},
              {"name": "Bhabinkamtibmas", "number": "+6281200000002"}]
FALLBACK_S = 0.6


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db", NODE, clock=Clock(forced_quality="synced"))
    yield ob
    ob.close()


def _service(port: int, outbox: Outbox, sender: Any) -> SyncService:
    cfg = node_config(port, NODE, sms_fallback_seconds=FALLBACK_S,
                      modem={"enabled": True, "port": "/dev/null", "sms_recipients": RECIPIENTS})
    svc = SyncService(cfg, outbox, snapshots=None, clock=outbox.clock,
                      status_provider=lambda: {}, command_handler=None, sms_sender=sender)
    svc.sms.check_s = 0.1
    return svc


def _types(outbox: Outbox, typ: str) -> list[Any]:
    return [e for e in outbox.list(limit=1000) if e.type == typ]


def test_p1_with_broker_down_sends_one_sms_per_incident_via_modem(outbox: Outbox) -> None:
    port = free_port()  # nothing listens here: the broker is unreachable
    with FakeModem() as fake:
        modem = Modem(node_config(port).modem.model_copy(update={"port": fake.port}))
        modem.open()
        try:
            a = outbox.record(EventDraft("PANIC", 1, {"button": "utama"}, incident_id="inc-1"))
            outbox.record(EventDraft("PANIC", 1, {"button": "utama"}, incident_id="inc-1"))
            outbox.record(EventDraft("LELAYU", 3))
            outbox.record(EventDraft("KUMPUL", 4))
            svc = _service(port, outbox, modem.send_sms)
            with running_service(svc):
                wait_until(lambda: len(_types(outbox, "SMS_SENT")) == 1, 20, what="SMS_SENT")
                time.sleep(FALLBACK_S * 3)  # several more checks: nothing more may be sent
            assert sorted(n for n, _ in fake.sent_sms) == sorted(r["number"] for r in RECIPIENTS)
            text = fake.sent_sms[0][1]
            assert "PANIC" in text and "RT03/RW05" in text and a.event_id[:8] in text
            assert len(text) <= 160
            assert "sms_sent_at" in outbox.flags(a.event_id)
            # A restart must not resend.
            with running_service(_service(port, outbox, modem.send_sms)):
                time.sleep(FALLBACK_S * 3)
            assert len(fake.sent_sms) == 2
            assert len(_types(outbox, "SMS_SENT")) == 1
        finally:
            modem.close()


def test_no_sms_for_p3_p4_or_before_the_deadline(outbox: Outbox) -> None:
    rec = SmsRecorder()
    outbox.record(EventDraft("LELAYU", 3))
    outbox.record(EventDraft("PATROLI", 4))
    svc = _service(free_port(), outbox, rec)
    svc.sms.after_s = 2.5
    with running_service(svc):
        p1 = outbox.record(EventDraft("PANIC", 1))
        time.sleep(1.0)
        assert rec.sent == []  # P1 not yet overdue; P3/P4 never
        wait_until(lambda: len(rec.sent) == 2, 10, what="SMS for the P1")
        time.sleep(0.5)  # P3/P4 are overdue too by now: still only the P1's two messages
    assert len(rec.sent) == 2
    assert all(p1.event_id[:8] in t and "PANIC" in t for _, t in rec.sent)


def test_no_sms_when_central_acked_in_time(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    rec = SmsRecorder()
    acker = PahoAcker(mosquitto.port)
    try:
        svc = _service(mosquitto.port, outbox, rec)
        with running_service(svc):
            outbox.record(EventDraft("PANIC", 1))
            wait_until(lambda: outbox.counts()["acked"] == 1, 10, what="ack")
            mosquitto.kill()  # broker gone after the ack: still no SMS for an acked event
            wait_until(lambda: not svc.connected, 10, what="disconnected")
            time.sleep(FALLBACK_S * 3)
        assert rec.sent == []
        assert _types(outbox, "SMS_SENT") == []
    finally:
        acker.close()


def test_failing_modem_records_fault_and_retries(outbox: Outbox) -> None:
    rec = SmsRecorder()
    rec.fail = True
    svc = _service(free_port(), outbox, rec)
    with running_service(svc):
        outbox.record(EventDraft("KEBAKARAN", 1))
        wait_until(lambda: len(_types(outbox, "MODEM_FAULT")) >= 1, 10, what="MODEM_FAULT")
        assert rec.sent == []
        rec.fail = False
        wait_until(lambda: len(rec.sent) == 2, 10, what="retry succeeded")
        wait_until(lambda: len(_types(outbox, "SMS_SENT")) == 1, 10, what="SMS_SENT")
    assert all("KEBAKARAN" in t for _, t in rec.sent)
