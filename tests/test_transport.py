"""The one MQTT/TLS client factory: keys through systemd credentials for the post AND central,
clear errors naming the file, TCP_NODELAY on client sockets."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest
from helpers_sync import node_config

from central_sync.config import CentralConfig
from central_sync.mqtt_central import connect_spec as central_spec
from central_sync.mqtt_central import make_client as central_client
from central_sync.pki import PkiSettings, init_ca
from edge.credentials import credential_path
from edge.sync.mqtt import connect_spec as node_spec
from edge.sync.transport import NODELAY, TlsFiles, TransportError, make_client, paho_client, tls_context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiSettings:
    settings = PkiSettings(dir=tmp_path_factory.mktemp("pki"))
    init_ca(settings)
    return settings


def test_credentials_directory_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configured = tmp_path / "etc" / "node.key"
    creds = tmp_path / "creds"
    creds.mkdir()
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert credential_path(configured) == configured
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert credential_path(configured) == configured  # not provided as a credential
    (creds / "node.key").write_text("k")
    assert credential_path(configured) == creds / "node.key"


def test_post_and_central_load_keys_only_present_as_credentials(
        pki: PkiSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from central_sync.pki import PkiFiles

    files = PkiFiles(pki.dir)
    creds = tmp_path / "creds"
    creds.mkdir()
    gone = tmp_path / "root-only"  # the configured key path: not readable (here: absent)
    central_key = creds / "central-mqtt.key"
    shutil.copy(files.central_key, central_key)
    node_cfg = node_config(1883, "pos-rt03", tls={
        "ca_file": str(files.ca_cert), "cert_file": str(files.central_cert),
        "key_file": str(gone / "central-mqtt.key")})
    ccfg = CentralConfig.model_validate({"database": str(tmp_path / "c.db"), "broker": {
        "tls": {"ca_file": str(files.ca_cert), "cert_file": str(files.central_cert),
                "key_file": str(gone / "central-mqtt.key")}}})
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    for spec in (node_spec(node_cfg.sync, "x"), central_spec(ccfg, "central")):
        assert spec.tls is not None
        with pytest.raises(TransportError) as err:
            tls_context(spec.tls)
        assert err.value.reason == "key_unreadable"
        assert "central-mqtt.key does not exist" in err.value.detail
        assert "CREDENTIALS_DIRECTORY is not set" in err.value.detail
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))

    async def build() -> None:  # aiomqtt clients are made inside a running loop
        for spec in (node_spec(node_cfg.sync, "x"), central_spec(ccfg, "central")):
            assert make_client(spec) is not None
        client, _buf = central_client(ccfg, "central")
        assert b"offline" in paho_client(client)._will_payload  # central's retained will

    asyncio.run(build())


def test_broken_material_is_named(pki: PkiSettings, tmp_path: Path) -> None:
    from central_sync.pki import PkiFiles

    files = PkiFiles(pki.dir)
    bad_ca = tmp_path / "ca.crt"
    bad_ca.write_text("not a certificate")
    with pytest.raises(TransportError) as err:
        tls_context(TlsFiles(ca_file=bad_ca))
    assert err.value.reason == "ca_unreadable"
    with pytest.raises(TransportError) as err:
        tls_context(TlsFiles(ca_file=files.ca_cert, cert_file=files.broker_cert,
                             key_file=files.central_key))
    assert err.value.reason == "tls_mismatch"


def test_client_sockets_set_tcp_nodelay() -> None:
    assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1) in NODELAY
    spec = node_spec(node_config(1883).sync, "x")
    assert spec.socket_options == NODELAY


def test_aiomqtt_private_client_is_reached_only_through_the_transport_seam() -> None:
    """``edge.sync.transport.paho_client`` is the one place that knows where aiomqtt 2.x keeps
    its paho client: nothing else in the project reads ``._client`` of an aiomqtt client."""
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for package in ("central_sync", "edge", "bench", "tests"):
        for path in sorted((root / package).rglob("*.py")):
            if path.name in ("transport.py", "test_transport.py"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"(?<!self)\._client\b", line):
                    offenders.append(f"{path.relative_to(root)}:{n}")
    assert offenders == []


def test_paho_client_is_the_client_aiomqtt_drives() -> None:
    async def build() -> None:
        client = aiomqtt.Client("127.0.0.1", 1, identifier="seam")
        mqtt = paho_client(client)
        assert isinstance(mqtt, paho.Client)
        assert mqtt._client_id == b"seam"  # the very client aiomqtt configured
        assert paho_client(client) is mqtt

    asyncio.run(build())
    with pytest.raises(TransportError) as err:
        paho_client(object())  # type: ignore[arg-type]
    assert err.value.reason == "aiomqtt_incompatible"
