"""Edge uplink against a real Mosquitto and a real SQLite outbox; a tiny paho acker plays central
(the end-to-end tests with the real central are in test_sync_e2e.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from helpers_sync import PahoAcker, node_config, running_service, wait_until

from central_sync.broker import LocalMosquitto
from edge.clock import Clock
from edge.outbox import EventDraft, Outbox
from edge.sync.service import SyncService
from edge.sync.uplink import MAX_UNCONFIRMED
from edge.sync.uplink_pace import Pacer
from edge.sync.wire import MAX_BATCH_EVENTS

NODE = "pos-rt03"


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "outbox.db", NODE, clock=Clock(forced_quality="synced"))
    yield ob
    ob.close()


def _service(cfg_port: int, outbox: Outbox, clock: Clock | None = None, **sync: object) -> SyncService:
    cfg = node_config(cfg_port, NODE, **sync)
    return SyncService(cfg, outbox, snapshots=None, clock=clock or outbox.clock,
                       status_provider=lambda: {"state": "off"}, command_handler=None)


def test_all_events_delivered_once_and_acked_in_priority_order(mosquitto: LocalMosquitto,
                                                               outbox: Outbox) -> None:
    drafts = [EventDraft("PATROLI" if i % 3 else "TEST", 4 if i % 3 else 3, {"i": i})
              for i in range(600)]
    outbox.record_many(drafts)
    acker = PahoAcker(mosquitto.port)
    try:
        svc = _service(mosquitto.port, outbox)
        with running_service(svc):
            wait_until(lambda: outbox.counts()["acked"] == 600, 60, what="all acked")
        ids = [e["event_id"] for e in acker.events]
        assert len(set(ids)) == 600
        assert outbox.counts()["ready"] == 0 and outbox.counts()["in_flight"] == 0
        for prio in (3, 4):
            seqs = [e["seq"] for e in acker.events if e["priority"] == prio]
            firsts = list(dict.fromkeys(seqs))
            assert firsts == sorted(firsts), f"P{prio} out of order"
        # P3 (more urgent) is claimed before P4: the first P4 arrives after most P3s.
        first_p4 = next(i for i, e in enumerate(acker.events) if e["priority"] == 4)
        assert first_p4 >= 150
    finally:
        acker.close()


def test_p1_takes_reserved_slot_when_window_is_full(mosquitto: LocalMosquitto,
                                                   outbox: Outbox) -> None:
    outbox.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(2000)])
    acker = PahoAcker(mosquitto.port, ack=False)  # central never acks: the window stays full
    try:
        svc = _service(mosquitto.port, outbox, inflight_window=100)
        with running_service(svc):
            wait_until(lambda: len(acker.unique_ids()) >= 90, 30, what="backlog window filled")
            assert outbox.counts()["in_flight"] <= 100
            p1 = outbox.record(EventDraft("PANIC", 1, {"button": "b1"}))
            wait_until(lambda: p1.event_id in acker.unique_ids(), 10, what="P1 delivered")
            assert outbox.counts()["in_flight"] <= 100
    finally:
        acker.close()


def test_ack_timeout_requeues_and_resends(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    ev = outbox.record(EventDraft("TEST", 3))
    acker = PahoAcker(mosquitto.port, ack=False)
    try:
        svc = _service(mosquitto.port, outbox, ack_timeout_seconds=0.5)
        with running_service(svc):
            wait_until(lambda: sum(e["event_id"] == ev.event_id for e in acker.events) >= 2, 15,
                       what="resend after ack timeout")
            assert svc.stats.requeued >= 1
        got = outbox.get(ev.event_id)
        assert got is not None and got.status == "ready"  # released on stop, never acked
    finally:
        acker.close()


def test_rejected_events_are_acked_locally_with_reason(mosquitto: LocalMosquitto,
                                                      outbox: Outbox) -> None:
    bad = outbox.record(EventDraft("KUMPUL", 4))
    good = outbox.record(EventDraft("TEST", 3))
    acker = PahoAcker(mosquitto.port, reject={"KUMPUL": "bad_signature"})
    try:
        with running_service(_service(mosquitto.port, outbox)):
            wait_until(lambda: outbox.counts()["acked"] == 2, 15, what="both settled")
        assert outbox.flags(bad.event_id).get("rejected") == "bad_signature"
        assert "rejected" not in outbox.flags(good.event_id)
        assert sum(e["event_id"] == bad.event_id for e in acker.events) == 1
    finally:
        acker.close()


def test_unsynced_clock_is_corrected_after_first_ack(mosquitto: LocalMosquitto,
                                                     tmp_path: Path) -> None:
    clock = Clock(forced_quality="unsynced")
    ob = Outbox(tmp_path / "o.db", NODE, clock=clock)
    acker = PahoAcker(mosquitto.port)
    try:
        first = ob.record(EventDraft("TEST", 3))
        with running_service(_service(mosquitto.port, ob, clock)):
            wait_until(lambda: ob.counts()["acked"] == 1, 15, what="first ack")
            assert clock.offset is not None
            second = ob.record(EventDraft("TEST", 3))  # recorded "corrected" already
            wait_until(lambda: ob.counts()["acked"] == 2, 15, what="second ack")
        by_id = {e["event_id"]: e for e in acker.events}
        assert by_id[first.event_id]["time_quality"] == "unsynced"
        assert by_id[second.event_id]["time_quality"] == "corrected"
    finally:
        acker.close()
        ob.close()


def test_presence_birth_will_and_heartbeat(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    acker = PahoAcker(mosquitto.port)
    try:
        svc = _service(mosquitto.port, outbox, heartbeat_seconds=0.3)
        with running_service(svc):
            wait_until(lambda: any(p["state"] == "online" for p in acker.presence), 10,
                       what="birth")
            wait_until(lambda: len(acker.heartbeats) >= 2, 10, what="heartbeats")
        birth = next(p for p in acker.presence if p["state"] == "online")
        assert birth["rt"] == 3 and birth["rw"] == 5 and birth["boot_id"] == outbox.boot_id
        assert birth["kelurahan_code"] == "33.74.10.1001"
        hb = acker.heartbeats[-1]
        assert hb["siren"] == {"state": "off"} and "ready" in hb["outbox"]
    finally:
        acker.close()


def test_broker_sigkill_and_restart_loses_nothing(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    outbox.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(3000)])
    acker = PahoAcker(mosquitto.port)
    try:
        # The stand-in acker has no persistent session: what is published before it is back is
        # lost at the broker and comes back through the ack timeout.
        svc = _service(mosquitto.port, outbox, ack_timeout_seconds=2)
        with running_service(svc):
            wait_until(lambda: outbox.counts()["acked"] >= 300, 30, what="drain started")
            mosquitto.kill()
            mosquitto.start()
            acker.close()
            acker = PahoAcker(mosquitto.port)
            wait_until(lambda: outbox.counts()["acked"] == 3000, 60, what="all acked")
        assert svc.stats.reconnects >= 2
    finally:
        acker.close()


def test_backlog_is_sent_in_batches_and_a_p1_alone(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    outbox.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(1000)])
    acker = PahoAcker(mosquitto.port)
    try:
        svc = _service(mosquitto.port, outbox)
        with running_service(svc):
            wait_until(lambda: outbox.counts()["acked"] == 1000, 60, what="backlog acked")
            assert svc.stats.published >= 1000 and svc.stats.messages <= 20
            messages, published = svc.stats.messages, svc.stats.published
            p1 = outbox.record(EventDraft("PANIC", 1, {"button": "utama"}))
            wait_until(lambda: p1.event_id in acker.unique_ids(), 10, what="P1 delivered")
            assert (svc.stats.messages, svc.stats.published) == (messages + 1, published + 1)
            assert len(acker.unique_ids()) == 1001
    finally:
        acker.close()


def test_p1_goes_first_on_the_p1_channel_then_on_event(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    """A P1 leaves on ``up/<node>/event/p1`` before its copy on ``event``; a central without the
    P1 lane (this acker ignores ``event/p1``) still acknowledges the copy. Backlog stays off the lane."""
    outbox.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(300)])
    acker = PahoAcker(mosquitto.port)
    try:
        svc = _service(mosquitto.port, outbox)
        with running_service(svc):
            wait_until(lambda: outbox.counts()["acked"] == 300, 60, what="backlog acked")
            p1 = outbox.record(EventDraft("PANIC", 1, {"button": "utama"}))
            wait_until(lambda: outbox.counts()["acked"] == 301, 30, what="P1 acked through the event copy")
            with acker.lock:
                arrivals = list(acker.arrivals)
            lane = [i for ch, i in arrivals if ch == "event/p1"]
            assert lane == [p1.event_id]  # only the alarm used the lane, once
            assert arrivals.index(("event/p1", p1.event_id)) < arrivals.index(("event", p1.event_id))
            assert svc.stats.p1_messages == 1
    finally:
        acker.close()


def test_ack_timeout_adapts_to_slow_acks_and_back(outbox: Outbox) -> None:
    """When Acks come minutes after publishing (a fleet's backlog queued at the broker), the ack
    timeout grows with the measured publish->Ack time instead of resending what is only queued;
    it never drops below the configured one and is capped."""
    import time as _time

    from edge.sync.ack_timeout import Backoff
    from edge.sync.uplink import MAX_ADAPTIVE_FACTOR, EventUplink, UplinkStats
    from edge.sync.wire import Ack

    jittered = EventUplink(outbox, outbox.clock, node_id=NODE, topic="t", window=100, ack_timeout_s=10.0,
                           sign_event=None, stats=UplinkStats())
    assert 10.0 <= jittered.current_timeout_s <= 12.5
    up = EventUplink(outbox, outbox.clock, node_id=NODE, topic="t", window=100, ack_timeout_s=10.0,
                     sign_event=None, stats=UplinkStats(), backoff=Backoff(jitter=0.0))
    assert up.current_timeout_s == 10.0
    for n in range(5):  # Acks arriving 60 s after the publish
        up.inflight[f"e{n}"] = _time.monotonic() - 60.0
        up.on_ack(Ack(node_id=NODE, event_ids=[f"e{n}"], central_time=0.0))
    assert 60.0 < up.current_timeout_s <= 10.0 * MAX_ADAPTIVE_FACTOR
    for n in range(5):  # a 1-hour Ack: capped
        up.inflight[f"h{n}"] = _time.monotonic() - 3600.0
        up.on_ack(Ack(node_id=NODE, event_ids=[f"h{n}"], central_time=0.0))
    assert up.current_timeout_s == 10.0 * MAX_ADAPTIVE_FACTOR
    for n in range(60):  # central is quick again: back to the configured timeout
        up.inflight[f"q{n}"] = _time.monotonic() - 0.01
        up.on_ack(Ack(node_id=NODE, event_ids=[f"q{n}"], central_time=0.0))
    assert up.current_timeout_s == 10.0


def test_timeout_round_probes_then_resends_what_a_later_ack_shows_lost(outbox: Outbox) -> None:
    """Without an Ack since, an overdue round resends only the oldest PROBE_EVENTS (the rest may
    just be queued at the broker behind other posts' backlogs); once an event published later is
    acknowledged, the older overdue ones are resent; rounds are a timeout apart."""
    import asyncio
    import time as _time

    from edge.sync.uplink import PROBE_EVENTS, EventUplink, UplinkStats
    from edge.sync.wire import Ack

    up = EventUplink(outbox, outbox.clock, node_id=NODE, topic="t", window=500, ack_timeout_s=1.0,
                     sign_event=None, stats=UplinkStats())
    t0 = _time.monotonic() - 100.0
    for n in range(100):
        up.inflight[f"old{n}"] = t0 + n * 0.001
    up.inflight["later"] = t0 + 50.0
    asyncio.run(up._expire(_time.monotonic()))
    assert up.stats.ack_timeouts == 1 and len(up.inflight) == 101 - PROBE_EVENTS
    assert all(f"old{n}" not in up.inflight for n in range(PROBE_EVENTS))  # the oldest went
    asyncio.run(up._expire(_time.monotonic()))
    assert up.stats.ack_timeouts == 1  # the next round waits a timeout
    up.on_ack(Ack(node_id=NODE, event_ids=["later"], central_time=0.0))  # published after them
    up._next_round = float("-inf")
    asyncio.run(up._expire(_time.monotonic()))
    assert up.stats.ack_timeouts == 2 and up.inflight == {}  # the overtaken ones all go again
    up.inflight[f"old{PROBE_EVENTS}"] = _time.monotonic() + 1000.0  # claimed again, in flight
    up.on_ack(Ack(node_id=NODE, event_ids=[f"old{PROBE_EVENTS}"], central_time=0.0))
    assert up._acked_sent == t0 + 50.0  # Karn: the Ack of a resent event is no evidence


def test_probes_double_while_their_acks_come_back(outbox: Outbox) -> None:
    """A window lost as a whole (a broker restart while the post published it): no first-copy Ack
    can ever show it lost, only the probes' Acks come back (Karn: no evidence). Each round whose
    probes were acknowledged doubles the next probe; a first-copy Ack resets it."""
    import asyncio
    import time as _time

    from edge.sync.uplink import PROBE_EVENTS, EventUplink, UplinkStats
    from edge.sync.wire import Ack

    up = EventUplink(outbox, outbox.clock, node_id=NODE, topic="t", window=1000, ack_timeout_s=1.0,
                     sign_event=None, stats=UplinkStats())
    t0 = _time.monotonic() - 100.0
    for n in range(700):
        up.inflight[f"lost{n}"] = t0 + n * 0.001
    sizes = []
    for _round in range(5):
        before = len(up.inflight)
        up._next_round = float("-inf")
        asyncio.run(up._expire(_time.monotonic()))
        probe = [f"lost{n}" for n in range(700) if f"lost{n}" not in up.inflight and f"lost{n}" in up._resent]
        sizes.append(before - len(up.inflight))
        for i in probe:  # claimed and published again
            up.inflight[i] = _time.monotonic()
        up.on_ack(Ack(node_id=NODE, event_ids=probe, central_time=0.0))  # the probes' Acks (resent: Karn)
    assert sizes == [PROBE_EVENTS, 2 * PROBE_EVENTS, 4 * PROBE_EVENTS, 8 * PROBE_EVENTS, 16 * PROBE_EVENTS]
    # A round whose resent events all came back is followed at once (self-clocked, as TCP's slow
    # start grows per round trip), not a backed-off timeout later: a broker that lost a whole
    # window recovers in a few round trips instead of seconds per doubling.
    up._next_round = float("-inf")
    asyncio.run(up._expire(_time.monotonic()))
    probe = sorted(up._round_left)
    assert len(probe) == min(32 * PROBE_EVENTS, 700 - sum(sizes)) and up._next_round > _time.monotonic() + 0.5
    for i in probe:
        up.inflight[i] = _time.monotonic()
    up.on_ack(Ack(node_id=NODE, event_ids=probe[:-1], central_time=0.0))
    assert up._next_round > _time.monotonic() + 0.5  # one still missing: the timer stands
    up.on_ack(Ack(node_id=NODE, event_ids=probe[-1:], central_time=0.0))
    assert up._next_round <= _time.monotonic()
    up.inflight["fresh"] = _time.monotonic()
    up.on_ack(Ack(node_id=NODE, event_ids=["fresh"], central_time=0.0))  # a first copy: evidence again
    assert up._probe == PROBE_EVENTS


def test_a_new_p1_overtakes_the_backlog_still_in_the_post(mosquitto: LocalMosquitto, outbox: Outbox) -> None:
    """A backlog message leaves the post only while fewer than ``MAX_UNCONFIRMED`` earlier ones wait
    for the broker's PUBACK. With the broker frozen (SIGSTOP: a broker swamped by a reconnecting
    fleet) the rest of a 3,000-event claim waits in the post, so a P1 recorded now is published at
    once and reaches the broker behind at most ``MAX_UNCONFIRMED`` backlog messages, not behind
    the whole claim."""
    acker = PahoAcker(mosquitto.port)
    assert mosquitto.proc is not None
    pid = mosquitto.proc.pid
    try:
        svc = _service(mosquitto.port, outbox)
        with running_service(svc):
            wait_until(lambda: any(p["state"] == "online" for p in acker.presence), 30, what="post online")
            os.kill(pid, signal.SIGSTOP)
            try:
                outbox.record_many([EventDraft("PATROLI", 4, {"i": i}) for i in range(3000)])
                wait_until(lambda: outbox.counts()["in_flight"] >= 2900, 30, what="backlog claimed")
                wait_until(lambda: svc.stats.messages >= MAX_UNCONFIRMED, 30, what="first messages handed over")
                assert svc.stats.messages == MAX_UNCONFIRMED  # the rest waits for the broker's PUBACKs
                p1 = outbox.record(EventDraft("PANIC", 1, {"button": "utama"}))
                wait_until(lambda: svc.stats.p1_messages == 1, 30, what="P1 published while the broker is frozen")
            finally:
                os.kill(pid, signal.SIGCONT)
            wait_until(lambda: outbox.counts()["acked"] == 3001, 60, what="everything acked")
        with acker.lock:
            normal = [i for ch, i in acker.arrivals if ch == "event"]
        ahead = normal.index(p1.event_id)
        assert ahead <= MAX_UNCONFIRMED * MAX_BATCH_EVENTS, ahead  # not behind the other ~2,900
        assert len(set(normal)) == 3001
    finally:
        acker.close()


def test_pacer_wakes_on_the_puback_of_a_paced_message_from_any_thread() -> None:
    """The lane waiting for room is woken by the PUBACK of one of ITS paced messages (matched by
    message id: paho calls ``on_publish`` before it marks the message published), also when paho
    runs on another thread; other PUBACKs (P1s, snapshots) leave it asleep."""
    async def scenario() -> None:
        wake = asyncio.Event()
        pacer = Pacer(wake, limit=2)
        pacer.reset()
        pacer.sent(paho.MQTTMessageInfo(7))
        pacer.sent(paho.MQTTMessageInfo(8))
        assert not pacer.has_room()
        pacer.confirmed(99)  # a P1's PUBACK, on the loop thread
        assert not wake.is_set() and not pacer.has_room()
        paho_thread = threading.Thread(target=pacer.confirmed, args=(8,))
        paho_thread.start()
        paho_thread.join()
        await asyncio.wait_for(wake.wait(), 30)  # hopped onto the loop
        assert pacer.has_room() and pacer.unconfirmed == 1
        wake.clear()
        pacer.confirmed(7)  # on the loop thread: at once
        assert wake.is_set() and pacer.unconfirmed == 0

    asyncio.run(scenario())
