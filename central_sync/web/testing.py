"""Helpers for tests and demos of the web app: a recording command sender and event builders.

``RecordingSender`` stands in for IngestService at the command boundary only; everything else
(SQLite, the app, HTTP) is real.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher

from central_sync.store.supervision_tables import SupervisionTables
from edge.incidents import INCIDENTS, IncidentType
from edge.sync.wire import Command, EventEnvelope, Presence


@dataclass
class RecordingSender:
    """``send_command`` that records what it was given."""

    sent: list[tuple[Command, str]] = field(default_factory=list)
    fail: bool = False

    async def send_command(self, cmd: Command, *, issued_by: str) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append((cmd, issued_by))

    async def send_commands(self, cmds: Sequence[Command], *,
                            record: Callable[[list[Command]], None]) -> list[Command]:
        if self.fail:
            raise ConnectionError("broker down")
        record(list(cmds))
        self.sent.extend((c, "batch") for c in cmds)
        return list(cmds)

    def actions(self, action: str | None = None) -> list[Command]:
        return [c for c, _ in self.sent if action is None or c.action == action]


def register(store: Any, node_id: str, where: str = "33.74.01.1001/5/3", *, name: str | None = None,
             lat: float | None = None, lon: float | None = None) -> None:
    """Enter a post into the store's enrolment registry (what ``kentongan-central enrol`` does,
    without the certificate): its place and name as central will use them."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from central_sync.pki import public_key_pem
    from central_sync.registry import Registry

    kel, rw, rt = where.split("/")
    Registry(store.registry_tables()).add(
        node_id=node_id, signing_public_key=public_key_pem(Ed25519PrivateKey.generate()).decode(),
        kelurahan_code=kel, rw=int(rw), rt=int(rt), display_name=name or f"Pos {node_id}",
        cert_serial=uuid.uuid4().hex, cert_not_after=time.time() + 86400 * 365, replace=True,
        lat=lat, lon=lon)


def presence(node_id: str, kelurahan_code: str = "33.74.01.1001", rw: int = 5, rt: int = 3,
             display_name: str | None = None) -> Presence:
    return Presence(node_id=node_id, state="online", boot_id="b1", version="0.1.0",
                    at=time.time(), kelurahan_code=kelurahan_code, rw=rw, rt=rt,
                    display_name=display_name or f"Pos {node_id}")


_seq = iter(range(1, 10**9))


def event(node_id: str, kind: str, *, at: float | None = None,
          payload: dict[str, Any] | None = None, time_quality: str = "synced",
          incident_id: str | None = None) -> EventEnvelope:
    try:
        priority = int(INCIDENTS[IncidentType(kind)].priority)
    except ValueError:
        priority = 4
    return EventEnvelope(
        event_id=uuid.uuid4().hex, node_id=node_id, boot_id="b1", seq=next(_seq),
        mono_ns=time.monotonic_ns(), wall_time=time.time() if at is None else at,
        time_quality=time_quality,
        type=kind, priority=priority, incident_id=incident_id, payload=payload or {})


#: The harness's password hasher: argon2id as in production, at its cheapest parameters
#: (1 pass over 1 MiB: about 1 ms instead of 0.1-0.4 s). Every WebEnv test adds users and logs
#: in; at the production cost those hashes were most of a desk test's time. What a test proves
#: (right password in, wrong one out, same answer for unknown users) does not depend on the cost;
#: production's hasher is ``users.DEFAULT_HASHER`` (its own test in test_web_auth).
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class WebEnv:
    """A real CentralStore + web app + TestClients for tests (close() when done)."""

    PASSWORD = "correct horse battery"
    LINK_ID = "webenv-ingest"

    def __init__(self, db_path: Any, web: dict[str, Any] | None = None) -> None:
        from contextlib import ExitStack

        from fastapi.testclient import TestClient

        from central_sync.store import CentralStore
        from central_sync.web.app import context_of, create_app

        self._stack = ExitStack()
        self._client_cls = TestClient
        self.store = CentralStore(db_path)
        self.sender = RecordingSender()
        # The harness applies the store's change feed itself (``sync``), synchronously, instead
        # of the app's background follower, so each step is visible to the next one.
        self.feed = self.store.change_feed()
        self.mark = self.feed.head()
        # No ingest runs here: the harness stands in for one connected ingest process (its link
        # beat, refreshed by ``sync``), and tests rarely sync every 20 s, so it is trusted for
        # 600 s unless the test configures supervision itself.
        web = dict(web or {})
        web.setdefault("supervision", {"blind_after_s": 600.0, "quiet_after_s": None})
        self._sup = SupervisionTables(self.store.desk())
        self._link_since: float | None = None
        self.link_up()
        self.app = create_app({"web": web}, self.store, self.sender, follow_changes=False,
                              hasher=CHEAP_HASHER)
        self.ctx = context_of(self.app)
        self.anon = self._stack.enter_context(TestClient(self.app))

    def user(self, name: str, role: str, rts: tuple[str, ...] = ()) -> None:
        from central_sync.users import RtRef

        self.ctx.users.add(name, role, self.PASSWORD, [RtRef.parse(r) for r in rts])

    def client(self, name: str, password: str | None = None) -> tuple[Any, str]:
        """A logged-in TestClient (own cookie jar) and its CSRF token."""
        client = self._stack.enter_context(self._client_cls(self.app))
        r = client.post("/api/login", json={"username": name,
                                            "password": password or self.PASSWORD})
        assert r.status_code == 200, r.text
        return client, r.json()["csrf_token"]

    def node(self, node_id: str, where: str = "33.74.01.1001/5/3", **place: Any) -> None:
        """Enrol the post at ``where`` (registry) and let it announce itself (presence)."""
        kel, rw, rt = where.split("/")
        register(self.store, node_id, where, **place)
        self.store.upsert_presence(presence(node_id, kel, int(rw), int(rt)), time.time())
        self.sync()

    def events(self, *envs: EventEnvelope) -> list[str]:
        """Commit through the store; the desk learns of them from the change feed."""
        accepted, _dups = self.store.insert_events(list(envs), time.time())
        self.sync()
        return accepted

    def link_up(self) -> None:
        """Write the stand-in ingest process's link beat (central can see the broker)."""
        now = time.time()
        if self._link_since is None:
            self._link_since = now
        self._sup.link_beat(self.LINK_ID, self._link_since, now, now)

    def link_down(self) -> None:
        """The stand-in ingest process lost the broker (central is blind from now on)."""
        self._sup.link_down(self.LINK_ID)
        self._link_since = None

    def sync(self) -> None:
        """Apply everything the store's change feed has (as the web app's follower does)."""
        if self._link_since is not None:
            self.link_up()
        while True:
            changes = self.feed.wait(self.mark, 0)
            self.mark = changes.mark
            if not (changes.events or changes.nodes):
                return
            self.ctx.desk.apply_changes(changes)

    def incident_of(self, event_id: str) -> str:
        inc_id = self.ctx.desk.book.incident_of_event(event_id)
        assert inc_id is not None, f"event {event_id} is in no incident"
        return inc_id

    def close(self) -> None:
        self._stack.close()
        self.feed.close()
        self.store.close()
