"""Real posts and a real central for the siren-control tests: ``Agent`` processes' worth of
posts (``kentongan-edge`` agents in simulate mode: gpiozero MockFactory pins) on one background
loop, and central's ingest + web app on another, as ``kentongan-central run`` does."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from central_sync.broker import LocalMosquitto
from central_sync.config import CentralConfig, parse_central_config
from central_sync.ingest import IngestService
from central_sync.registry import Registry
from central_sync.store import CentralStore
from central_sync.users import UserStore
from central_sync.web.app import serve
from edge.agent import Agent
from edge.config import NodeConfig, parse_config
from edge.signing import CommandSigner, public_key_pem
from tests.helpers_web import ready_port, web_section
from tests.waits import wait_for

PASSWORD = "correct horse battery"
RELAY = 18
KEL = "33.74.10.1001"


class Keys:
    """Central's command key (it signs every command) and one event key the posts share."""

    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.command_key = Ed25519PrivateKey.generate()
        self.signer = CommandSigner(self.command_key)
        self.command_pub = tmp / "central-command.pub.pem"
        self.command_pub.write_text(public_key_pem(self.command_key))
        self.node_key = tmp / "node-signing.pem"
        self.node_key.write_bytes(Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))


def post_config(state: Path, port: int, node_id: str, rw: int, rt: int, keys: Keys,
                self_test: dict[str, Any] | None = None, **extra: Any) -> NodeConfig:
    data: dict[str, Any] = {
        "node": {"node_id": node_id, "kelurahan_code": KEL, "rw": rw, "rt": rt,
                 "display_name": f"Pos {node_id}"},
        "buttons": [{"name": "panic", "pin": 17, "incident": "PANIC", "hold_seconds": 0.1}],
        "siren": {"pin": RELAY, "quiet_hours": {"enabled": False},
                  "self_test": self_test or {"silent_enabled": False}},
        "camera": {"backend": "none"},
        "storage": {"state_dir": str(state)},
        "sync": {"broker_host": "127.0.0.1", "broker_port": port, "heartbeat_seconds": 5},
        "security": {"node_signing_key_file": str(keys.node_key),
                     "central_command_key_file": str(keys.command_pub)},
    }
    data.update(extra)
    return parse_config(data)


class Posts:
    """Several in-process post agents on one loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="posts", daemon=True)
        self.thread.start()
        self.agents: dict[str, Agent] = {}

    def start(self, cfg: NodeConfig, central: Central) -> Agent:
        """Enrol the post at ``central`` (its place is the registry's) and start its agent."""
        central.enrol(cfg)
        agent = Agent(cfg, simulate=True)
        asyncio.run_coroutine_threadsafe(agent.start(), self.loop).result(60)
        self.agents[cfg.node.node_id] = agent
        return agent

    def relay(self, node_id: str) -> Any:
        hw = self.agents[node_id].hw
        assert hw is not None
        return hw.pin_factory.pin(RELAY)

    def close(self) -> None:
        for agent in self.agents.values():
            asyncio.run_coroutine_threadsafe(agent.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        self.loop.close()


class Central:
    """Ingest + web app on their own loop in a thread; ``http`` is a logged-in client."""

    def __init__(self, tmp: Path, broker: LocalMosquitto, keys: Keys, **ingest: Any) -> None:
        ready = tmp / "web.ready"
        self.cfg: CentralConfig = parse_central_config({
            "database": str(tmp / "central.db"),
            "broker": {"host": broker.host, "port": broker.port, "client_id": "central-sirens"},
            "ingest": {"batch_wait_ms": 5, **ingest},
            "web": web_section(ready),
        })
        self.store = CentralStore(self.cfg.database)
        users = UserStore(self.store.desk())
        users.add("op", "operator", PASSWORD)
        users.add("boss", "admin", PASSWORD)
        self.ingest = IngestService(self.cfg, self.store, sign_command=keys.signer.sign)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[Any] | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name="central", daemon=True)
        self.thread.start()
        assert self.ready.wait(10)
        self.web_port = ready_port(ready)
        self.base = f"http://127.0.0.1:{self.web_port}"
        wait_for(self._web_up, 60, "central's web app")
        wait_for(self.ingest.connected.is_set, 60, "central connected to the broker")

    def enrol(self, cfg: NodeConfig) -> None:
        """What ``kentongan-central enrol`` records (without the certificate): the post's key and
        its place, which central uses for routing and the desk."""
        key = serialization.load_pem_private_key(cfg.security.node_signing_key_file.read_bytes(), None)
        assert isinstance(key, Ed25519PrivateKey)
        Registry(self.store.registry_tables()).add(
            node_id=cfg.node.node_id, signing_public_key=public_key_pem(key),
            kelurahan_code=cfg.node.kelurahan_code, rw=cfg.node.rw, rt=cfg.node.rt,
            display_name=cfg.node.display_name, cert_serial=uuid.uuid4().hex,
            cert_not_after=time.time() + 86400, replace=True)

    def _web_up(self) -> bool:
        try:
            return httpx.get(f"{self.base}/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _main(self) -> None:
        async def both() -> None:
            self.loop = asyncio.get_running_loop()
            self.task = asyncio.current_task()
            self.ready.set()
            await asyncio.gather(self.ingest.run(), serve(self.cfg, self.store, self.ingest))

        try:
            asyncio.run(both())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def login(self, user: str) -> tuple[httpx.Client, dict[str, str]]:
        client = httpx.Client(base_url=self.base, timeout=30)
        r = client.post("/api/login", json={"username": user, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return client, {"X-CSRF-Token": r.json()["csrf_token"]}

    def close(self) -> None:
        if self.task is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(15)
        self.store.close()
