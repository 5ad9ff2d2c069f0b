"""The production broker config (broker/mosquitto.conf + broker/acl) on a real Mosquitto.

The production file is rendered onto a free loopback port with this test's CA files (made by
central_sync.pki / enrol); everything else (mTLS, CRL, ACL, limits) is the production text.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import ssl
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central_sync.broker import PROD_ACL, PROD_CONF, LocalMosquitto, production_broker
from central_sync.enrol import NodeInfo, enrol_node, revoke_node
from central_sync.pki import PkiFiles, PkiSettings, init_ca
from central_sync.registry import Registry
from edge.sync.wire import MAX_MESSAGE_BYTES

UP = "kentongan/v1/up"
DOWN = "kentongan/v1/down"


@dataclass(frozen=True)
class Creds:
    ca: Path
    cert: Path
    key: Path


def _conf_values(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value.strip())
    return out


def test_production_config_settings() -> None:
    conf = _conf_values(PROD_CONF.read_text())
    assert conf["allow_anonymous"] == ["false"]
    assert conf["listener"] == ["8883"]
    assert conf["require_certificate"] == ["true"]
    assert conf["use_identity_as_username"] == ["true"]
    assert conf["tls_version"] == ["tlsv1.2"]
    for key in ("cafile", "certfile", "keyfile", "crlfile", "acl_file"):
        assert len(conf[key]) == 1
    assert int(conf["message_size_limit"][0]) >= MAX_MESSAGE_BYTES
    assert int(conf["max_queued_messages"][0]) >= 100_000
    assert conf["persistence"] == ["true"]
    assert 0 < int(conf["autosave_interval"][0]) <= 300
    acl = PROD_ACL.read_text()
    assert "pattern write kentongan/v1/up/%u/#" in acl
    assert "pattern read kentongan/v1/down/%u/#" in acl


# -- a real broker with the production config -------------------------------------------------


def _extract(bundle: Path, dest: Path, ca: Path) -> Creds:
    dest.mkdir(parents=True)
    with tarfile.open(bundle) as tar:
        for name in ("keys/node.crt", "keys/node.key"):
            (dest / Path(name).name).write_bytes(tar.extractfile(name).read())  # type: ignore[union-attr]
    return Creds(ca, dest / "node.crt", dest / "node.key")


class World:
    def __init__(self, root: Path) -> None:
        self.settings = PkiSettings(dir=root / "pki", broker_hosts=("localhost",))
        files = init_ca(self.settings)
        reg = Registry(sqlite3.connect(root / "central.db"))
        self.creds: dict[str, Creds] = {}
        for node in ("rt01-a", "rt02-b", "rt03-revoked", "rt04-late", "rt05-live", "rt06-back",
                     "rt07-crl"):
            bundle = enrol_node(self.settings, reg, NodeInfo(node, "33.74.10.1001", 1, 1, node),
                                root / f"{node}.bundle")
            self.creds[node] = _extract(bundle, root / node, files.ca_cert)
        revoke_node(self.settings, reg, "rt03-revoked")
        self.registry = reg
        self.creds["central"] = Creds(files.ca_cert, files.central_cert, files.central_key)
        foreign = PkiSettings(dir=root / "foreign")
        ffiles = init_ca(foreign)
        fbundle = enrol_node(foreign, Registry(sqlite3.connect(":memory:")),
                             NodeInfo("rt01-a", "33.74.10.1001", 1, 1, "evil"),
                             root / "foreign.bundle")
        # A certificate for the same CN from another CA, presented with the REAL CA as trust.
        fc = _extract(fbundle, root / "foreign-node", ffiles.ca_cert)
        self.creds["foreign"] = Creds(files.ca_cert, fc.cert, fc.key)
        self.files = files
        self.broker = self._start(root / "broker", files)

    def _start(self, bdir: Path, files: PkiFiles) -> LocalMosquitto:
        return production_broker(bdir, ca_file=files.ca_cert, cert_file=files.broker_cert,
                                 key_file=files.broker_key, crl_file=files.crl,
                                 acl_file=PROD_ACL).start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = World(tmp_path_factory.mktemp("brokersec"))
    try:
        yield w
    finally:
        w.broker.stop()


class Probe:
    """A paho MQTT 5 client that records what happens to it."""

    def __init__(self, world: World, who: str, creds: Creds | None = None,
                 client_cert: bool = True) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{who}-"
                             f"{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
        cr = creds or world.creds[who]
        if client_cert:
            self.c.tls_set(ca_certs=str(cr.ca), certfile=str(cr.cert), keyfile=str(cr.key))
        else:
            self.c.tls_set(ca_certs=str(cr.ca))
        self.world = world
        self.connected = threading.Event()
        self.ended = threading.Event()
        self.disconnected = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.puback: dict[int, ReasonCode] = {}
        self.suback = threading.Event()
        self._cv = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_message = self._on_message
        self.c.on_publish = self._on_publish

    def _on_connect(self, c: mqtt.Client, u: object, flags: object, rc: ReasonCode,
                    props: Properties | None = None) -> None:
        if not rc.is_failure:
            self.connected.set()
        self.ended.set()

    def _on_disconnect(self, *args: object) -> None:
        self.ended.set()
        self.disconnected.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cv:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cv.notify_all()

    def _on_publish(self, c: mqtt.Client, u: object, mid: int, rc: ReasonCode,
                    props: Properties | None = None) -> None:
        with self._cv:
            self.puback[mid] = rc
            self._cv.notify_all()

    def connect(self, timeout: float = 5.0) -> bool:
        try:
            self.c.connect("127.0.0.1", self.world.broker.port, keepalive=10)
        except (ssl.SSLError, OSError):
            return False
        self.c.loop_start()
        self.ended.wait(timeout)
        return self.connected.is_set()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.suback.clear()
        granted: list[ReasonCode] = []
        self.c.on_subscribe = lambda _c, _u, _m, rcs, _p=None: (granted.extend(rcs),
                                                                self.suback.set())
        self.c.subscribe(topic, qos=1)
        assert self.suback.wait(5)
        return granted

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        mid = self.c.publish(topic, payload, qos=1).mid
        with self._cv:
            assert self._cv.wait_for(lambda: mid in self.puback, 5), "no PUBACK"
            return self.puback[mid]

    def wait_for(self, payload: bytes, timeout: float = 5.0) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: any(p == payload for _, p in self.messages),
                                     timeout)

    def payloads(self) -> list[bytes]:
        with self._cv:
            return [p for _, p in self.messages]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def probes(world: World) -> Iterator[dict[str, Probe]]:
    made: dict[str, Probe] = {}
    for who in ("rt01-a", "rt02-b", "central"):
        p = Probe(world, who)
        assert p.connect(), f"{who} could not connect"
        made[who] = p
    made["central"].subscribe(f"$share/ingest/{UP}/#")
    made["rt01-a"].subscribe(f"{DOWN}/rt01-a/#")
    made["rt02-b"].subscribe(f"{DOWN}/rt02-b/#")
    yield made
    for p in made.values():
        p.close()


def test_central_reads_all_uplinks_and_writes_downlinks(probes: dict[str, Probe]) -> None:
    a, b, central = probes["rt01-a"], probes["rt02-b"], probes["central"]
    assert not a.publish(f"{UP}/rt01-a/event", b"a-1").is_failure
    assert not b.publish(f"{UP}/rt02-b/event", b"b-1").is_failure
    assert central.wait_for(b"a-1") and central.wait_for(b"b-1")
    assert not central.publish(f"{DOWN}/rt01-a/cmd", b"cmd-a").is_failure
    assert a.wait_for(b"cmd-a")


def test_node_cannot_publish_as_another_node(probes: dict[str, Probe]) -> None:
    a, b, central = probes["rt01-a"], probes["rt02-b"], probes["central"]
    rc = a.publish(f"{UP}/rt02-b/event", b"forged-by-a")
    assert rc.is_failure and rc.value == 0x87  # MQTT 5: not authorized
    # nor send commands, to anyone
    assert a.publish(f"{DOWN}/rt02-b/cmd", b"forged-cmd").value == 0x87
    assert a.publish(f"{DOWN}/rt01-a/cmd", b"self-cmd").value == 0x87
    assert not b.publish(f"{UP}/rt02-b/event", b"b-marker").is_failure
    assert central.wait_for(b"b-marker")
    assert not b.wait_for(b"forged-cmd", 0.3)
    assert b"forged-by-a" not in central.payloads()
    assert b"self-cmd" not in a.payloads()


def test_p1_channel_is_the_nodes_own_and_reaches_centrals_p1_lane(probes: dict[str, Probe]) -> None:
    """The P1 channel (two levels, ``up/<node>/event/p1``) is inside each node's own uplink tree:
    the node may write its own, never another node's; central's lane subscription (as
    ``central_sync.ingest_p1.p1_subscription`` with a shared group) receives it."""
    a, b, central = probes["rt01-a"], probes["rt02-b"], probes["central"]
    assert not central.subscribe(f"$share/ingest/{UP}/+/event/p1")[0].is_failure
    assert not a.publish(f"{UP}/rt01-a/event/p1", b"a-p1").is_failure
    assert central.wait_for(b"a-p1")
    rc = b.publish(f"{UP}/rt01-a/event/p1", b"p1-forged-by-b")
    assert rc.is_failure and rc.value == 0x87
    assert not central.wait_for(b"p1-forged-by-b", 0.3)


def test_node_cannot_read_other_nodes_traffic(probes: dict[str, Probe]) -> None:
    a, b, central = probes["rt01-a"], probes["rt02-b"], probes["central"]
    a.subscribe(f"{DOWN}/rt02-b/#")  # granted by MQTT, but every message is filtered
    a.subscribe(f"{UP}/#")
    assert not central.publish(f"{DOWN}/rt02-b/cmd", b"cmd-for-b").is_failure
    assert not b.publish(f"{UP}/rt02-b/event", b"b-event").is_failure
    assert not central.publish(f"{DOWN}/rt01-a/ack", b"ack-for-a").is_failure
    assert b.wait_for(b"cmd-for-b") and central.wait_for(b"b-event")
    assert a.wait_for(b"ack-for-a")  # a's own message arrives after the others were routed
    assert b"cmd-for-b" not in a.payloads() and b"b-event" not in a.payloads()


@pytest.mark.parametrize("case", ["revoked", "no_certificate", "foreign_ca"])
def test_rejected_clients_cannot_connect(world: World, case: str) -> None:
    if case == "revoked":
        p = Probe(world, "rt03-revoked")
    elif case == "no_certificate":
        p = Probe(world, "rt01-a", client_cert=False)
    else:
        p = Probe(world, "foreign")
    try:
        assert not p.connect(timeout=3.0)
    finally:
        p.c.loop_stop()
    # and the broker is still serving legitimate clients
    ok = Probe(world, "rt01-a")
    assert ok.connect()
    ok.close()


def test_revocation_takes_effect_on_broker_reload(world: World) -> None:
    """The documented procedure: revoke, copy crl.pem, reload (SIGHUP) the broker."""
    before = Probe(world, "rt04-late")
    assert before.connect()
    before.close()
    revoke_node(world.settings, world.registry, "rt04-late")
    shutil.copy(world.files.crl, world.broker.workdir / "etc" / "crl.pem")
    assert world.broker.proc is not None
    os.kill(world.broker.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 5
    refused = False
    while time.monotonic() < deadline and not refused:
        p = Probe(world, "rt04-late")
        refused = not p.connect(timeout=1.5)
        p.c.loop_stop()
        if not refused:
            p.close()
    assert refused
    ok = Probe(world, "rt01-a")
    assert ok.connect()
    ok.close()


# -- live revocation: kentongan-central revoke cuts an open session (dynamic-security) -----------


def _central_toml(world: World) -> Path:
    root = world.settings.dir.parent
    creds = world.creds["central"]
    conf = root / "central.toml"
    conf.write_text(
        'database = "central.db"\n'
        "[broker]\n"
        f'host = "127.0.0.1"\nport = {world.broker.port}\n'
        "[broker.tls]\n"
        f'ca_file = "{creds.ca}"\ncert_file = "{creds.cert}"\nkey_file = "{creds.key}"\n'
        "[pki]\n"
        'dir = "pki"\n')
    return conf


def test_production_broker_loads_dynamic_security(world: World) -> None:
    conf = _conf_values(PROD_CONF.read_text())
    assert conf["plugin"][0].endswith("/mosquitto_dynamic_security.so")
    assert len(conf["plugin_opt_config_file"]) == 1
    from central_sync.config import load_central_config
    from central_sync.dynsec import run_commands

    answer = run_commands(load_central_config(_central_toml(world)),
                          [{"command": "getClient", "username": "central"}])
    roles = [r["rolename"] for r in answer[0]["data"]["client"]["roles"]]
    assert roles == ["kentongan-control"]


def test_revoke_cuts_connected_post_within_5s_and_it_stays_out(world: World) -> None:
    from central_sync.audit import AuditLog
    from central_sync.cli import main as central_main
    from central_sync.store import CentralStore

    node = Probe(world, "rt05-live")
    assert node.connect()
    node.subscribe(f"{DOWN}/rt05-live/#")
    central = Probe(world, "central")
    assert central.connect()
    central.subscribe(f"{UP}/rt05-live/#")
    assert not node.publish(f"{UP}/rt05-live/event", b"before").is_failure
    assert central.wait_for(b"before")

    started = time.monotonic()
    assert central_main(["revoke", "rt05-live", "--config", str(_central_toml(world))]) == 0
    assert node.disconnected.wait(5.0 - (time.monotonic() - started)), \
        "open session not cut within 5 s of revoke"
    print(f"revoke -> session cut: {time.monotonic() - started:.3f} s")
    node.c.loop_stop()
    assert world.registry.get("rt05-live").status == "revoked"  # type: ignore[union-attr]

    # Reconnecting before the broker re-reads its CRL: TLS still passes (certificate logins are
    # not re-checked by the plugin), but the role denies everything.
    again = Probe(world, "rt05-live")
    assert again.connect()
    assert again.publish(f"{UP}/rt05-live/event", b"after").value == 0x87
    assert all(rc.is_failure for rc in again.subscribe(f"{DOWN}/rt05-live/#"))
    assert not central.publish(f"{DOWN}/rt05-live/cmd", b"cmd-after").is_failure
    assert not again.wait_for(b"cmd-after", 0.5)
    assert not central.wait_for(b"after", 0.5)
    again.close()

    # Once the broker reloads its CRL (kentongan-broker-crl.path does that): no handshake at all.
    shutil.copy(world.files.crl, world.broker.workdir / "etc" / "crl.pem")
    assert world.broker.proc is not None
    os.kill(world.broker.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    refused = False
    while time.monotonic() < deadline and not refused:
        p = Probe(world, "rt05-live")
        refused = not p.connect(timeout=1.5)
        p.c.loop_stop()
        if not refused:
            p.close()
    assert refused
    # other posts and central are untouched
    ok = Probe(world, "rt01-a")
    assert ok.connect()
    assert not ok.publish(f"{UP}/rt01-a/event", b"still-fine").is_failure
    ok.close()
    central.close()
    store = CentralStore(world.settings.dir.parent / "central.db")
    try:
        actions = [(r["action"], r["target"]) for r in AuditLog(store.audit_tables()).recent()]
    finally:
        store.close()
    assert ("revoke", "rt05-live") in actions


def test_reenrolment_lifts_the_broker_denial(world: World) -> None:
    from central_sync.dynsec import reinstate_at_broker, revoke_at_broker

    cfg_path = _central_toml(world)
    from central_sync.config import load_central_config

    cfg = load_central_config(cfg_path)
    revoke_at_broker(cfg, "rt06-back")
    revoke_at_broker(cfg, "rt06-back")  # a second revoke is harmless
    p = Probe(world, "rt06-back")
    assert p.connect()
    assert p.publish(f"{UP}/rt06-back/event", b"x").value == 0x87
    p.close()
    reinstate_at_broker(cfg, "rt06-back")
    q = Probe(world, "rt06-back")
    assert q.connect()
    assert not q.publish(f"{UP}/rt06-back/event", b"y").is_failure
    q.close()


def test_revoke_reports_unreachable_broker(world: World, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from central_sync.broker import free_port
    from central_sync.cli import main as central_main

    conf = _central_toml(world)
    text = conf.read_text().replace(f"port = {world.broker.port}", f"port = {free_port()}")
    bad = conf.with_name("central-unreachable.toml")
    bad.write_text(text)
    assert central_main(["revoke", "rt04-late", "--config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "broker was NOT told" in err and "Traceback" not in err


def test_central_state_nodes_read_only_central_writes(world: World, probes: dict[str, Probe]) -> None:
    """Central presence topics: every node may read them, only central may write them (a stolen
    post cannot fake 'central online' or 'offline' for the other posts)."""
    a, b, central = probes["rt01-a"], probes["rt02-b"], probes["central"]
    state = "kentongan/v1/central/state"
    a.subscribe(f"{state}/+")
    rc = b.publish(f"{state}/central", b"forged-online")
    assert rc.is_failure and rc.value == 0x87
    assert b.publish(f"{state}/rt02-b", b"forged-own").value == 0x87
    assert not central.publish(f"{state}/central-w0", b"real-online").is_failure
    assert a.wait_for(b"real-online")
    assert b"forged-online" not in a.payloads() and b"forged-own" not in a.payloads()


def test_both_broker_configs_set_tcp_nodelay() -> None:
    from central_sync.broker import DEV_CONF

    for path in (PROD_CONF, DEV_CONF):
        assert _conf_values(path.read_text()).get("set_tcp_nodelay") == ["true"], path


def test_revoke_installs_the_crl_and_the_path_units_reload_refuses_the_post(world: World) -> None:
    """With ``pki.broker_crl_file`` (central and broker on one host), ``revoke`` writes the new CRL
    into the broker's crlfile at once; the reload that kentongan-broker-crl.path starts on that
    change (SIGHUP: Mosquitto 2.0 re-reads crlfile for its TLS listeners) refuses the post's
    next handshake. No dynamic-security here: the CRL path alone, as a broker without the plugin
    would have it."""
    from cryptography import x509

    from central_sync.cli import main as central_main

    unit = (PROD_CONF.parent.parent / "systemd" / "kentongan-broker-crl.path").read_text()
    crlfile = _conf_values(PROD_CONF.read_text())["crlfile"][0]
    assert f"PathChanged={crlfile}" in unit  # the unit watches the production broker's crlfile
    broker_crl = world.broker.workdir / "etc" / "crl.pem"
    root = world.settings.dir.parent
    conf = root / "central-crl.toml"
    conf.write_text(f'database = "central.db"\n[pki]\ndir = "pki"\nbroker_crl_file = "{broker_crl}"\n')
    before = Probe(world, "rt07-crl")
    assert before.connect()
    serial = x509.load_pem_x509_certificate(world.creds["rt07-crl"].cert.read_bytes()).serial_number
    assert central_main(["revoke", "rt07-crl", "--config", str(conf)]) == 0
    crl = x509.load_pem_x509_crl(broker_crl.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    assert world.broker.proc is not None
    os.kill(world.broker.proc.pid, signal.SIGHUP)  # what kentongan-broker-crl.service does
    deadline = time.monotonic() + 10
    refused = False
    while time.monotonic() < deadline and not refused:
        p = Probe(world, "rt07-crl")
        refused = not p.connect(timeout=1.5)
        p.c.loop_stop()
        if not refused:
            p.close()
    assert refused, "the revoked post still completes a TLS handshake after the reload"
    # the session opened before the reload: Mosquitto does not re-check a live TLS session
    print(f"open session after the reload: {'cut' if before.disconnected.is_set() else 'still open'}")
    before.close()
    ok = Probe(world, "rt01-a")
    assert ok.connect()
    ok.close()
