"""Role boundaries of the command-centre API, over real HTTP (TestClient) and real SQLite."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from central_sync.web.testing import WebEnv, event
from edge.sync.wire import SnapshotEnvelope

RT_A = "33.74.01.1001/5/3"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db", {"rw_warning_patterns": {"33.74.01.1001/5": "2.2-2.2"}})
    e.node("pos-a", RT_A)
    e.node("pos-b", "33.74.01.1001/5/4")      # same RW, other RT
    e.node("pos-c", "33.74.02.1002/1/1")      # another kelurahan
    e.user("op", "operator")
    e.user("rt1", "rt_admin", (RT_A,))
    e.user("root", "admin")
    yield e
    e.close()


@pytest.fixture
def seeded(env: WebEnv) -> dict[str, str]:
    ids = env.events(
        event("pos-a", "PANIC", payload={"reporter": "Budi", "phone": "0812555", "button": "b1"}),
        event("pos-a", "LELAYU", payload={"reporter": "Siti", "text": "Pak Harjo wafat"}),
        event("pos-a", "KEBAKARAN", payload={"reporter_phone": "0813777", "button": "b2"}),
        event("pos-c", "KUMPUL", payload={"text": "kerja bakti"}),
    )
    names = ("panic", "lelayu", "fire", "kumpul")
    return {n: env.incident_of(i) for n, i in zip(names, ids, strict=True)}


def _types(client) -> set[str]:
    r = client.get("/api/incidents")
    assert r.status_code == 200
    return {i["type"] for i in r.json()}


def test_operator_never_sees_rt_only_notices(env: WebEnv, seeded: dict[str, str]) -> None:
    op, _ = env.client("op")
    assert _types(op) == {"PANIC", "KEBAKARAN"}
    for name in ("lelayu", "kumpul"):
        assert op.get(f"/api/incidents/{seeded[name]}").status_code == 404
        assert op.get(f"/api/cap/{seeded[name]}").status_code == 404
        assert op.get(f"/fragments/incidents/{seeded[name]}").status_code == 404
        assert op.get(f"/incidents/{seeded[name]}").status_code == 404
    assert "LELAYU" not in op.get("/").text


def test_rt_admin_sees_only_own_rt_non_crime(env: WebEnv, seeded: dict[str, str]) -> None:
    rt, _ = env.client("rt1")
    assert _types(rt) == {"LELAYU", "KEBAKARAN"}   # not PANIC (crime), not KUMPUL (other RT)
    r = rt.get(f"/api/incidents/{seeded['panic']}")
    assert r.status_code in (403, 404)
    assert "Budi" not in r.text and "0812555" not in r.text
    assert rt.get(f"/api/cap/{seeded['panic']}").status_code == 404
    assert rt.get(f"/api/incidents/{seeded['kumpul']}").status_code == 404
    assert [n["node_id"] for n in rt.get("/api/nodes").json()] == ["pos-a"]


def test_reporter_identity_hidden_from_rt_admin(env: WebEnv, seeded: dict[str, str]) -> None:
    rt, _ = env.client("rt1")
    for name in ("fire", "lelayu"):
        body = rt.get(f"/api/incidents/{seeded[name]}")
        assert body.status_code == 200
        payloads = [e["payload"] for e in body.json()["events"]]
        assert payloads and all(not any("reporter" in k or "phone" in k for k in p)
                                for p in payloads)
        assert "0813777" not in body.text and "Siti" not in body.text
    fire = rt.get(f"/api/incidents/{seeded['fire']}").json()
    assert fire["events"][0]["payload"] == {"button": "b2"}
    page = rt.get(f"/incidents/{seeded['fire']}")
    assert page.status_code == 200 and "0813777" not in page.text
    # Police staff do see who reported.
    op, _ = env.client("op")
    panic = op.get(f"/api/incidents/{seeded['panic']}").json()
    assert panic["events"][0]["payload"]["reporter"] == "Budi"


def test_views_of_reports_and_snapshots_are_access_logged(env: WebEnv,
                                                          seeded: dict[str, str]) -> None:
    panic_event = env.ctx.desk.book.event_ids(seeded["panic"])[0]
    env.store.insert_snapshot(SnapshotEnvelope(
        snapshot_id="snap-0000000000000001", event_id=panic_event, node_id="pos-a",
        taken_at=time.time(), data=base64.b64encode(b"\xff\xd8\xffjpeg-bytes").decode()), time.time())
    op, _ = env.client("op")
    rt, _ = env.client("rt1")
    assert op.get(f"/api/incidents/{seeded['panic']}").json()["snapshots"][0]["snapshot_id"] \
        == "snap-0000000000000001"
    img = op.get("/api/snapshots/snap-0000000000000001")
    assert img.status_code == 200 and img.content == b"\xff\xd8\xffjpeg-bytes"
    assert img.headers["content-type"] == "image/jpeg"
    assert rt.get("/api/snapshots/snap-0000000000000001").status_code == 404
    assert rt.get(f"/api/incidents/{seeded['panic']}").status_code == 404

    assert op.get("/api/access-log").status_code == 403
    root, _ = env.client("root")
    rows = root.get("/api/access-log").json()
    seen = {(r["user"], r["action"], r["object_id"], r["allowed"]) for r in rows}
    assert ("op", "view_report", seeded["panic"], 1) in seen
    assert ("op", "view_snapshot", "snap-0000000000000001", 1) in seen
    assert ("rt1", "view_snapshot", "snap-0000000000000001", 0) in seen
    assert ("rt1", "view_report", seeded["panic"], 0) in seen
    assert all(r["client"] for r in rows)


def test_post_commands_by_role(env: WebEnv, seeded: dict[str, str]) -> None:
    rt, rt_csrf = env.client("rt1")
    op, op_csrf = env.client("op")
    h_rt, h_op = {"X-CSRF-Token": rt_csrf}, {"X-CSRF-Token": op_csrf}
    env.sender.sent.clear()
    assert rt.post("/api/nodes/pos-a/test", headers=h_rt).status_code == 403
    assert rt.post("/api/nodes/pos-a/stop", headers=h_rt).status_code == 403
    assert env.sender.sent == []
    assert op.post("/api/nodes/pos-a/test", headers=h_op).json()["sent"] is True
    assert op.post("/api/nodes/pos-c/stop", headers=h_op).json()["sent"] is True
    assert [(c.node_id, c.action) for c in env.sender.actions()] == [("pos-a", "test"),
                                                                     ("pos-c", "stop")]
    # RT notices: an RT admin to their own RT's post only; operators never.
    env.sender.sent.clear()
    r = rt.post("/api/nodes/pos-a/notice", headers=h_rt, json={"incident_type": "LELAYU"})
    assert r.status_code == 200 and r.json()["sent"]
    assert rt.post("/api/nodes/pos-c/notice", headers=h_rt,
                   json={"incident_type": "KUMPUL"}).status_code == 404
    assert rt.post("/api/nodes/pos-a/notice", headers=h_rt,
                   json={"incident_type": "PANIC"}).status_code == 422
    assert op.post("/api/nodes/pos-a/notice", headers=h_op,
                   json={"incident_type": "KUMPUL"}).status_code == 403
    [cmd] = env.sender.actions()
    assert (cmd.node_id, cmd.action, cmd.params["incident_type"]) == ("pos-a", "sound", "LELAYU")


def test_crime_warns_other_posts_of_the_rw(env: WebEnv) -> None:
    env.sender.sent.clear()
    env.events(event("pos-a", "PERAMPOKAN"))
    deadline = time.monotonic() + 5
    while not env.sender.sent and time.monotonic() < deadline:
        time.sleep(0.02)
    [cmd] = env.sender.actions("sound")
    assert cmd.node_id == "pos-b"            # same RW; not the source, not another kelurahan
    assert cmd.params["incident_type"] == "PERAMPOKAN"
    assert cmd.params["pattern"] == "2.2-2.2"  # the RW's configured warning pattern
    # RT-only notices warn nobody.
    env.sender.sent.clear()
    env.events(event("pos-a", "LELAYU"), event("pos-a", "KUMPUL"))
    time.sleep(0.2)
    assert env.sender.sent == []


def test_sealed_snapshots_are_unsealed_at_central(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from edge.sealing import Sealer

    key = X25519PrivateKey.generate()
    key_file = tmp_path / "seal.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    sealed = Sealer(key.public_key()).seal(b"\xff\xd8\xffsecret face")
    for configured in (True, False):
        e = WebEnv(tmp_path / f"c{configured}.db",
                   {"unseal_key_file": str(key_file)} if configured else {})
        try:
            e.user("op", "operator")
            for sid, blob in (("snap-sealed-00000001", sealed),
                              ("snap-tamper-00000001", sealed[:-1] + bytes([sealed[-1] ^ 1]))):
                e.store.insert_snapshot(SnapshotEnvelope(
                    snapshot_id=sid, node_id="pos-a", taken_at=time.time(), sealed=True,
                    data=base64.b64encode(blob).decode()), time.time())
            op, _ = e.client("op")
            r = op.get("/api/snapshots/snap-sealed-00000001")
            if configured:
                assert r.status_code == 200
                assert r.content == b"\xff\xd8\xffsecret face"
                assert op.get("/api/snapshots/snap-tamper-00000001").status_code == 409
            else:
                # sealed bytes cannot be shown to be an image: never served (images or nothing)
                assert r.status_code == 409 and b"secret" not in r.content
                assert r.headers["x-content-type-options"] == "nosniff"
        finally:
            e.close()
