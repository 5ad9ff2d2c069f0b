"""The key cache is refreshed off ingest's event loop (issue 8): the loop thread's message check
only reads it, an invalidation swaps a complete new key map in (no window where every node
misses), and a revocation still bites within ``check_every_s`` plus one preload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.broker import LocalMosquitto
from central_sync.message_auth import MessageAuth
from central_sync.store import CentralStore
from central_sync.verify_cache import CachedEventVerifier, KeyCache
from edge.errors import SecurityError
from edge.signing import EventSigner, MessageSigner, NodeKey
from edge.sync.wire import Heartbeat, encode
from tests.test_ingest import Node, ServiceThread, ev, make_cfg, up
from tests.waits import wait_for

#: Revocation bound asserted here, for ``check_every_s = 1``: the check interval plus one preload
#: and the scheduling of the refresher thread on a busy machine (docs/protocol.md).
BOUND_S = 2.0


class Registry:
    """A registry stand-in that records which thread asked it what."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeKey] = {}
        self.gen = 0
        self.calls: list[tuple[str, int]] = []  # (what, thread id)
        self.hold_preload: threading.Event | None = None  # set: preloads wait for it
        self.preloading = threading.Event()

    def enrol(self, node: str, key: Ed25519PrivateKey, status: str = "enrolled") -> None:
        self.nodes[node] = NodeKey(node, key.public_key(), status)
        self.gen += 1

    def lookup(self, node: str) -> NodeKey | None:
        self.calls.append(("lookup", threading.get_ident()))
        return self.nodes.get(node)

    def generation(self) -> int:
        self.calls.append(("generation", threading.get_ident()))
        return self.gen

    def preload(self, limit: int) -> list[NodeKey]:
        self.calls.append(("preload", threading.get_ident()))
        keys = list(self.nodes.values())[:limit]
        if self.hold_preload is not None:
            self.preloading.set()
            assert self.hold_preload.wait(30)
        return keys

    def cache(self, **kw: float) -> KeyCache:
        return KeyCache(self.lookup, self.generation, preload=self.preload, **kw)


def _heartbeat(signer: MessageSigner, node: str, i: int = 0) -> Heartbeat:
    """Heartbeat ``i`` of ``node`` (its index in ``version``: which one central applied last)."""
    return signer.sign(Heartbeat(node_id=node, boot_id="b1", at=time.time(), version=f"1.{i}",
                                 time_quality="synced"))


def test_message_auth_never_refreshes_the_cache_itself() -> None:
    reg, key = Registry(), Ed25519PrivateKey.generate()
    reg.enrol("pos-a", key)
    now = [0.0]
    cache = reg.cache(check_every_s=1.0, clock=lambda: now[0])
    cache.refresh()
    auth, signer = MessageAuth(cache), MessageSigner(key)
    reg.calls.clear()
    for i in range(20):
        now[0] = 10.0 * i  # well past check_every_s every time
        auth.check("pos-a", _heartbeat(signer, "pos-a").model_dump(mode="json"))
    assert reg.calls == []  # no generation check, no preload, no lookup: the map only
    reg.enrol("pos-a", key, "revoked")
    auth.check("pos-a", _heartbeat(signer, "pos-a").model_dump(mode="json"))  # not refreshed yet
    cache.refresh()
    try:
        auth.check("pos-a", _heartbeat(signer, "pos-a").model_dump(mode="json"))
        raise AssertionError("a revoked node passed")
    except SecurityError as exc:
        assert exc.reason == "revoked"


def test_an_invalidation_swaps_a_full_map_in_and_gets_meanwhile_still_hit() -> None:
    reg = Registry()
    keys = {f"pos-{i}": Ed25519PrivateKey.generate() for i in range(50)}
    for node, key in keys.items():
        reg.enrol(node, key)
    cache = reg.cache(check_every_s=0.0)
    cache.refresh()
    reg.enrol("pos-7", keys["pos-7"], "revoked")
    reg.hold_preload = threading.Event()
    refresher = threading.Thread(target=cache.refresh)
    refresher.start()
    try:
        assert reg.preloading.wait(30)  # the new map is being built
        reg.calls.clear()
        for node in keys:  # answered from the previous map: no miss, no registry read
            got = cache.get(node)
            assert got is not None and got.status == "enrolled"
        assert reg.calls == [] and cache.misses == 0
        cache.refresh()  # a second caller does not wait for (or repeat) the running one
        assert reg.calls == []
    finally:
        reg.hold_preload.set()
        refresher.join(30)
    assert cache.get("pos-7").status == "revoked"  # type: ignore[union-attr]
    assert cache.get("pos-8").status == "enrolled" and cache.misses == 0  # type: ignore[union-attr]
    assert cache.invalidations == 1


def test_ingest_loop_makes_no_registry_read_and_a_revocation_bites_within_the_bound(
        tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    """Real Mosquitto and ``IngestService``. The cache's clock runs 100x fast, so every
    ``refresh`` call outside ``keep_fresh``'s one-second schedule (the commit thread's per
    batch, or the per-message one the loop thread used to make) reaches the registry; the
    revocation phase sends heartbeats only, so no commit thread refresh helps the bound."""
    reg, key_a, key_b = Registry(), Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    reg.enrol("pos-a", key_a)
    reg.enrol("pos-b", key_b)
    cache = reg.cache(check_every_s=1.0, clock=lambda: time.monotonic() * 100)
    auth = MessageAuth(cache)
    cfg = make_cfg(tmp_path, mosquitto.port)
    store = CentralStore(cfg.database)
    central = ServiceThread(cfg, store, verify_event=CachedEventVerifier(cache), authenticate=auth)
    a, b = Node(mosquitto.port, "pos-a"), Node(mosquitto.port, "pos-b")
    sign = {"pos-a": MessageSigner(key_a), "pos-b": MessageSigner(key_b)}
    events = {"pos-a": EventSigner(key_a), "pos-b": EventSigner(key_b)}

    def event(node: Node, i: int) -> str:
        env = events[node.node_id].sign(ev(node.node_id, seq=i))
        node.publish(up(node.node_id), encode(env))
        return env.event_id

    def heartbeat(node: Node, i: int) -> None:
        node.publish(up(node.node_id, "heartbeat"), encode(_heartbeat(sign[node.node_id], node.node_id, i)))

    try:
        central.start()
        assert cache.preloaded == 2  # awaited before subscribing, off the loop
        for i in range(5):
            heartbeat(a, i)
            heartbeat(b, i)
            event(a, i)
            event(b, i)
        wait_for(lambda: len(a.acked_ids()) == 5 and len(b.acked_ids()) == 5, 30, "steady state acked")
        assert auth.rejected == {} and auth.checked >= 10

        reg.enrol("pos-a", key_a, "revoked")
        revoked_at = time.time()
        began: list[float] = []  # when publishing pos-a's heartbeat i began (i from 5)
        while time.time() < revoked_at + BOUND_S + 1.5:
            began.append(time.time())
            heartbeat(a, 5 + len(began) - 1)
            heartbeat(b, 5 + len(began) - 1)
            time.sleep(0.1)  # pacing the publisher, not waiting for a result
        late = [t for t in began if t > revoked_at + BOUND_S]
        assert len(late) >= 5
        wait_for(lambda: auth.rejected.get("revoked", 0) >= len(late), 30, "late heartbeats refused")
        wait_for(lambda: auth.checked >= 10 + 2 * len(began), 30, "every heartbeat checked")
        (node_a,) = [n for n in store.list_nodes() if n["node_id"] == "pos-a"]
        last = int(str(node_a["version"]).split(".")[1])
        assert last < 5 or began[last - 5] <= revoked_at + BOUND_S, "a heartbeat passed after the bound"
        assert auth.rejected == {"revoked": auth.rejected["revoked"]}  # pos-b's all accepted

        refused_ids = [event(a, 100 + i) for i in range(3)]
        accepted_ids = [event(b, 100 + i) for i in range(3)]
        wait_for(lambda: all(e in a.rejected() for e in refused_ids), 30, "pos-a's events answered")
        assert {a.rejected()[e] for e in refused_ids} == {"revoked"}
        wait_for(lambda: set(accepted_ids) <= set(b.acked_ids()), 30, "pos-b's events acked")
        # The event loop's thread never read the registry: not before, not after the revocation.
        assert all(ident != central.thread.ident for _what, ident in reg.calls), reg.calls
        assert {what for what, _ident in reg.calls} >= {"generation", "preload"}
        assert cache.invalidations >= 1
    finally:
        central.stop()
        a.close()
        b.close()
        store.close()
