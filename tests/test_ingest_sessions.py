"""A resumed persistent session with the subscriptions of an older configuration (another
``ingest.shared_group``, none -> one, one -> none) is reset once, and after that every message
is handled once (central_sync.mqtt_session). Real Mosquitto with the project's config, real
ingest service (main connection and P1 lane), raw paho publisher as the post."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig
from central_sync.ingest_stats import IngestStats
from central_sync.mqtt_central import subscriptions
from central_sync.mqtt_session import MAX_SUBSCRIPTION_ID, subscription_id
from central_sync.store import CentralStore
from edge.sync.wire import encode
from tests.helpers_central import StateWatcher
from tests.test_ingest import Node, ServiceThread, ev, make_cfg, up, wait_until

P1 = "event/p1"


def _records(caplog: pytest.LogCaptureFixture, event: str) -> list[logging.LogRecord]:
    return [r for r in list(caplog.records) if r.getMessage() == event]


def _settled(stats: IngestStats) -> bool:
    """Every received message has its outcome (nothing waits in ingest)."""
    return stats.inserted + stats.duplicates + stats.rejected_total() == stats.outcomes_expected()


def _came_back(watcher: StateWatcher, seen: int) -> bool:
    """Since the first run was seen online: (its stop's ``offline``,) the restart's ``online``,
    then the reset's ``offline`` and ``online`` (as a subsequence: a busy machine may add a
    reconnect of its own)."""
    with watcher.lock:
        states = [s for c, s in watcher.history[seen:] if c == "central-test"]
    want = ["online", "offline", "online"]
    for state in states:
        if want and state == want[0]:
            want.pop(0)
    return not want


def _start(cfg: CentralConfig, store: CentralStore) -> ServiceThread:
    svc = ServiceThread(cfg, store).start()
    p1 = svc.service.p1
    assert p1 is not None
    wait_until(p1.connected.is_set, what="P1 lane connected")
    return svc


def _publish_and_wait(node: Node, n: int, seq0: int) -> set[str]:
    envs = [ev(seq=seq0 + i, priority=3) for i in range(n)] + [ev(seq=seq0 + n + i) for i in range(3)]
    for e in envs[:n]:
        node.publish(up("node-a"), encode(e))
    for e in envs[n:]:
        node.publish(up("node-a", P1), encode(e))
    ids = {e.event_id for e in envs}
    wait_until(lambda: set(node.acked_ids()) >= ids, what="every event acknowledged")
    return ids


@pytest.mark.parametrize(("before", "after"), [("grp-a", "grp-b"), (None, "grp-b"), ("grp-a", None)])
def test_changed_subscriptions_reset_the_resumed_session_once(
        tmp_path: Path, mosquitto: LocalMosquitto, caplog: pytest.LogCaptureFixture,
        before: str | None, after: str | None) -> None:
    caplog.set_level(logging.INFO)
    old = make_cfg(tmp_path, mosquitto.port, shared_group=before, shared_session_expiry_seconds=600)
    new = make_cfg(tmp_path, mosquitto.port, shared_group=after, shared_session_expiry_seconds=600)
    store = CentralStore(old.database)
    node = Node(mosquitto.port, "node-a", db=old.database)
    watcher = StateWatcher(mosquitto.port)
    try:
        first = _start(old, store)
        watcher.wait_online({"central-test"})
        with watcher.lock:
            seen = len(watcher.history)
        first.stop()  # leaves both sessions (main, P1 lane) with the old subscriptions
        svc = _start(new, store)   # resumes them well within their expiry
        try:
            stats = svc.service.stats
            probes = [ev(seq=0, priority=3), ev(seq=1)]
            node.publish(up("node-a"), encode(probes[0]))
            node.publish(up("node-a", P1), encode(probes[1]))
            # One copy per subscription (old and new): the stale one resets each connection once.
            wait_until(lambda: (_records(caplog, "central_session_reset") and _records(caplog, "p1_lane_session_reset")
                                and svc.service.connected.is_set() and svc.service.p1 is not None
                                and svc.service.p1.connected.is_set()), what="both sessions reset and reconnected")
            wait_until(lambda: store.count_events() == 2 and _settled(stats), what="the probes stored")
            assert stats.session_resets == 2 and stats.stale_deliveries >= 2
            warned = sorted(r.__dict__["client_id"] for r in _records(caplog, "stale_subscription"))
            assert warned == ["central-test", "central-test-p1"]  # ONE warning per connection
            # The posts saw central leave and come back: they resend what the old session held at once.
            wait_until(lambda: _came_back(watcher, seen), what="online, offline and online again")

            received, duplicates, stale = stats.received, stats.duplicates, stats.stale_deliveries
            ids = _publish_and_wait(node, 40, seq0=10)
            wait_until(lambda: _settled(stats), what="ingest settled")
            assert stats.received - received == 43  # each message delivered (and handled) once
            assert stats.duplicates == duplicates and stats.stale_deliveries == stale
            assert stats.session_resets == 2  # no further reset: a clean start has no stale subscription
            assert store.count_events() == 2 + len(ids)  # nothing lost
        finally:
            svc.stop()

        # The same configuration again resumes the (now right) sessions: no stale delivery, no reset.
        again = _start(new, store)
        try:
            ids = _publish_and_wait(node, 20, seq0=100)
            stats = again.service.stats
            wait_until(lambda: _settled(stats), what="ingest settled")
            assert stats.received == 23 and stats.duplicates == 0
            assert stats.stale_deliveries == 0 and stats.session_resets == 0
        finally:
            again.stop()
        assert len(_records(caplog, "stale_subscription")) == 2
    finally:
        watcher.close()
        node.close()
        store.close()


def test_subscription_id_is_stable_and_in_range(tmp_path: Path) -> None:
    subs = subscriptions(make_cfg(tmp_path, 1883, shared_group="g"))
    sid = subscription_id(subs)
    assert 1 <= sid <= MAX_SUBSCRIPTION_ID
    assert subscription_id(list(reversed(subs))) == sid  # order does not matter
    assert subscription_id(subscriptions(make_cfg(tmp_path, 1883, shared_group="h"))) != sid
    assert subscription_id(subscriptions(make_cfg(tmp_path, 1883))) != sid
