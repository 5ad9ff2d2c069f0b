"""kentongan-central: validate-config, events, nodes, extension loading, and `run` as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from central_sync import cli
from central_sync.broker import LocalMosquitto
from central_sync.config import load_central_config
from central_sync.errors import CentralConfigError
from central_sync.store import CentralStore
from central_sync.store.supervision_tables import SupervisionTables
from central_sync.web.testing import register
from edge.sync.wire import EventEnvelope, Heartbeat, Presence, encode

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "firmware_config" / "examples" / "central-dev.toml"


def ev(node: str, seq: int) -> EventEnvelope:
    return EventEnvelope(event_id=uuid.uuid4().hex, node_id=node, boot_id="b", seq=seq, mono_ns=seq,
                         wall_time=1_700_000_000.0 + seq, time_quality="synced", type="KEBAKARAN", priority=1,
                         payload={"button": "fire"})


def write_cfg(tmp: Path, body: str = "", port: int = 1883) -> Path:
    path = tmp / "central.toml"
    path.write_text(f'database = "central.db"\n[broker]\nport = {port}\nclient_id = "central-cli"\n'
                    f'reconnect_max_seconds = 0.5\n{body}')
    return path


def test_example_config_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate-config", str(EXAMPLE)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    cfg = load_central_config(EXAMPLE)
    assert cfg.database.is_absolute() and cfg.ingest.batch_max == 500 and cfg.broker.client_id == "central"


@pytest.mark.parametrize(("body", "key", "reason"), [
    ("[ingest]\nbatch_maxx = 3\n", "ingest.batch_maxx", "unknown key"),
    ("[ingest]\nworkers = 2\n", "ingest.workers", "shared_group"),
    ("[ingest]\nbatch_max = 0\n", "ingest.batch_max", "greater than or equal to 1"),
    ("[ingest]\nlinger_msx = 30\n", "ingest.linger_msx", "unknown key"),
    ("[ingest]\nlinger_ms = -1\n", "ingest.linger_ms", "greater than or equal to 0"),
    ("[ingest]\nlinger_events = 0\n", "ingest.linger_events", "greater than or equal to 1"),
    ("[broker.tls]\nca_file = 'ca.crt'\ncert_file = 'c.crt'\n", "broker.tls.cert_file", "together"),
    ("topic_prefix = 'Bad Prefix'\n", "topic_prefix", "match pattern"),
])
def test_validate_config_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, key: str,
                                           reason: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'database = "central.db"\n{body}')
    assert cli.main(["validate-config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {key}: ") and reason in err, err
    with pytest.raises(CentralConfigError) as info:
        load_central_config(path)
    assert info.value.key_path == key


def test_validate_config_missing_file_and_bad_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("database = \n")
    assert cli.main(["validate-config", str(tmp_path / "bad.toml")]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    (tmp_path / "empty.toml").write_text("")
    assert cli.main(["validate-config", str(tmp_path / "empty.toml")]) == 2
    assert capsys.readouterr().err.startswith("error: store.url: ")


def test_events_and_nodes_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_cfg(tmp_path)
    assert cli.main(["events", "--config", str(path)]) == 0
    assert capsys.readouterr().out.strip() == "no events"
    store = CentralStore(tmp_path / "central.db")
    events = [ev("node-a", i) for i in range(3)] + [ev("node-b", 9)]
    store.insert_events(events, time.time())
    now = time.time()
    register(store, "node-a", name="Pos RT 03")  # the name comes from the registry
    store.upsert_presence(Presence(node_id="node-a", state="online"), now)
    store.upsert_heartbeat(Heartbeat(node_id="node-a", boot_id="b", at=now, version="0.1", time_quality="synced",
                                     outbox={"ready": 11, "in_flight": 1}), now)
    SupervisionTables(store.desk()).link_beat("ingest-1", now - 60, now, now)  # central has sight
    store.close()

    assert cli.main(["events", "--config", str(path), "--node", "node-a", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("node-a" in ln and "KEBAKARAN" in ln for ln in lines)
    assert events[2].event_id in lines[1] and events[1].event_id in lines[0]

    assert cli.main(["events", "--config", str(path), "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.strip().splitlines()]
    assert [r["event_id"] for r in rows] == [e.event_id for e in events]
    assert rows[0]["payload"] == {"button": "fire"} and rows[0]["rowid"] < rows[-1]["rowid"]

    assert cli.main(["nodes", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    line_a = next(ln for ln in out.splitlines() if ln.startswith("node-a"))
    assert "online" in line_a and "backlog 12" in line_a and "Pos RT 03" in line_a
    assert cli.main(["nodes", "--config", str(path), "--json"]) == 0
    nodes = {n["node_id"]: n for n in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert nodes["node-a"]["backlog"] == 12 and nodes["node-a"]["online"] is True
    assert nodes["node-b"]["backlog"] is None and nodes["node-b"]["last_seen"] is not None


def _nodes(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, str], str]:
    assert cli.main(["nodes", "--config", str(path), "--json"]) == 0
    status = {n["node_id"]: n["status"] for n in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert cli.main(["nodes", "--config", str(path)]) == 0
    return status, capsys.readouterr().out


def test_nodes_uses_the_desks_supervision_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``nodes`` judges posts as the desk does ([web.supervision] offline_after_s, central's own
    sight), not by a separate staleness rule: a post silent for 2 minutes is offline (the old
    rule called it online for 5 minutes), a post whose will said offline is offline at once,
    and while no ingest process has sight of the broker every post reads unknown."""
    path = write_cfg(tmp_path)
    store = CentralStore(tmp_path / "central.db")
    now = time.time()
    for node, heard in (("post-fresh", now - 5), ("post-silent", now - 120), ("post-will", now - 5)):
        store.upsert_presence(Presence(node_id=node, state="online"), heard)
        store.upsert_heartbeat(Heartbeat(node_id=node, boot_id="b", at=heard, version="0.1",
                                         time_quality="synced"), heard)
    store.upsert_presence(Presence(node_id="post-will", state="offline"), now - 4)
    links = SupervisionTables(store.desk())
    links.link_beat("ingest-1", now - 600, now, now)
    store.close()

    status, text = _nodes(path, capsys)
    assert status == {"post-fresh": "online", "post-silent": "offline", "post-will": "offline"}
    assert "note:" not in text
    # A longer offline_after_s in the desk's settings applies to the command line too.
    path.write_text(path.read_text() + "[web.supervision]\noffline_after_s = 180\n")
    status, _ = _nodes(path, capsys)
    assert status == {"post-fresh": "online", "post-silent": "online", "post-will": "offline"}
    # Central blind (its ingest's link beat is older than blind_after_s): every state is unknown.
    store = CentralStore(tmp_path / "central.db")
    SupervisionTables(store.desk()).link_down("ingest-1")
    store.close()
    status, text = _nodes(path, capsys)
    assert set(status.values()) == {"unknown"}
    assert text.startswith("note: central cannot see the posts now (no ingest process")


def test_extensions_are_optional_but_real_import_errors_surface(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli._load_extension("central_sync.cli_does_not_exist") is None
    (tmp_path / "kx_broken_ext.py").write_text("import kx_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError):
        cli._load_extension("kx_broken_ext")
    parser = cli.build_parser()
    assert parser.parse_args(["nodes", "--config", "x"]).func is cli.cmd_nodes


def test_run_subprocess_ingests_and_stops_on_sigterm(tmp_path: Path, mosquitto: LocalMosquitto) -> None:
    path = write_cfg(tmp_path, port=mosquitto.port)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "central_sync.cli", "run", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="node-a", protocol=mqtt.MQTTv5)
    try:
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        e = ev("node-a", 1)
        deadline = time.monotonic() + 30
        # Republish until stored: central's subscription may not exist yet on the first publishes.
        while time.monotonic() < deadline:
            pub.publish("kentongan/v1/up/node-a/event", encode(e), qos=1).wait_for_publish(5)
            if (tmp_path / "central.db").exists():
                store = CentralStore(tmp_path / "central.db")
                found = store.get_event(e.event_id) is not None
                store.close()
                if found:
                    break
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            time.sleep(0.2)
        else:
            raise AssertionError("central did not ingest the event")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        logs = [json.loads(ln) for ln in proc.stderr.read().decode().splitlines() if ln.startswith("{")]  # type: ignore[union-attr]
        assert {"central_starting", "central_connected", "central_stopped"} <= {r["event"] for r in logs}
    finally:
        pub.loop_stop()
        pub.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, body="bogus = 1\n")
    proc = subprocess.run([sys.executable, "-m", "central_sync.cli", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: broker.bogus: unknown key"


def test_nodes_lists_enrolment_status_after_revoke(tmp_path: Path) -> None:
    import json as _json
    import subprocess as _sp
    import sys as _sys

    cfg = tmp_path / "central.toml"
    cfg.write_text(f'database = "{tmp_path / "central.db"}"\n[pki]\ndir = "{tmp_path / "pki"}"\n')

    def cli(*args: str) -> str:
        res = _sp.run([_sys.executable, "-m", "central_sync.cli", *args, "--config", str(cfg)],
                      capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        return res.stdout

    cli("ca", "init")
    for node in ("pos-a-01", "pos-b-01"):
        cli("enrol", node, "--kelurahan", "33.74.10.1005", "--rw", "1", "--rt", "2",
            "--name", node, "--out", str(tmp_path / f"{node}.bundle"))
    cli("revoke", "pos-b-01")
    rows = {r["node_id"]: r for r in map(_json.loads, cli("nodes", "--json").splitlines())}
    assert rows["pos-a-01"]["enrolment"] == "enrolled"
    assert rows["pos-b-01"]["enrolment"] == "revoked"
    assert "revoked" in cli("nodes")
