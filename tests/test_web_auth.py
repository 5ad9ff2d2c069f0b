"""Login, sessions, CSRF and login rate limiting of the web app (real HTTP, real SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from central_sync.errors import AuthError
from central_sync.users import Role
from central_sync.web.auth import COOKIE
from central_sync.web.testing import WebEnv, event


@pytest.fixture
def env(tmp_path: Path) -> Iterator[WebEnv]:
    e = WebEnv(tmp_path / "central.db", {"login_limit": 5, "login_window_s": 300})
    e.node("pos-a")
    e.user("op", "operator")
    e.user("op2", "operator")
    yield e
    e.close()


def test_passwords_are_argon2_and_wrong_ones_fail(env: WebEnv) -> None:
    row = env.ctx.tables.user("op")
    assert row is not None and row["password_hash"].startswith("$argon2")
    assert env.ctx.users.verify("op", WebEnv.PASSWORD).role is Role.OPERATOR
    with pytest.raises(AuthError):
        env.ctx.users.verify("op", "not the password")
    with pytest.raises(AuthError):
        env.ctx.users.add("short", "operator", "tooshort")
    with pytest.raises(AuthError):
        env.ctx.users.add("rtx", "rt_admin", "long enough password")   # RT admin without RT


def test_session_cookie_flags_and_logout(env: WebEnv, tmp_path: Path) -> None:
    r = env.anon.post("/api/login", json={"username": "op", "password": WebEnv.PASSWORD})
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
    assert env.anon.get("/api/me").json()["name"] == "op"
    token = env.anon.cookies.get(COOKIE)
    assert token and env.ctx.tables.session(token) is None   # only a digest is stored
    csrf = r.json()["csrf_token"]
    assert env.anon.post("/logout", data={"csrf_token": csrf},
                         follow_redirects=False).status_code == 303
    env.anon.cookies.set(COOKIE, token)
    assert env.anon.get("/api/me").status_code == 401          # session destroyed server-side
    assert env.anon.get("/", follow_redirects=False).headers["location"] == "/login"

    secure = WebEnv(tmp_path / "secure.db", {"cookie_secure": True})
    try:
        secure.user("op", "operator")
        r = secure.anon.post("/api/login", json={"username": "op", "password": WebEnv.PASSWORD})
        assert "secure" in r.headers["set-cookie"].lower()
    finally:
        secure.close()


def test_state_changes_need_the_session_csrf_token(env: WebEnv) -> None:
    [event_id] = env.events(event("pos-a", "PANIC"))
    incident = env.incident_of(event_id)
    op, csrf = env.client("op")
    _other, other_csrf = env.client("op2")
    url = f"/api/incidents/{incident}/ack"
    assert op.post(url, json={"note": "x"}).status_code == 403
    assert op.post(url, json={"note": "x"}, headers={"X-CSRF-Token": "forged"}).status_code == 403
    assert op.post(url, json={"note": "x"},
                   headers={"X-CSRF-Token": other_csrf}).status_code == 403  # another session's
    assert op.post("/api/nodes/pos-a/stop").status_code == 403
    assert env.sender.sent == []
    assert env.ctx.desk.book.require(incident).state.value == "new"
    assert op.post(url, json={"note": "x"}, headers={"X-CSRF-Token": csrf}).status_code == 200
    # No session at all: 401 before any CSRF question.
    assert TestClient(env.app).post(url, json={}).status_code == 401


def test_login_rate_limited_per_user_and_per_address(env: WebEnv) -> None:
    for _ in range(5):
        r = env.anon.post("/api/login", json={"username": "op", "password": "wrong password!"})
        assert r.status_code == 401
    r = env.anon.post("/api/login", json={"username": "op", "password": WebEnv.PASSWORD})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    # The HTML form is limited the same way.
    assert env.anon.post("/login", data={"username": "op", "password": WebEnv.PASSWORD}
                         ).status_code == 429
    # Per client address too: the same address guessing other names is stopped.
    r = env.anon.post("/api/login", json={"username": "op2", "password": WebEnv.PASSWORD})
    assert r.status_code == 429


def test_html_login_form_and_pages(env: WebEnv) -> None:
    c = TestClient(env.app)
    assert c.get("/login").status_code == 200
    r = c.post("/login", data={"username": "op", "password": WebEnv.PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    page = c.get("/")
    assert page.status_code == 200 and 'name="csrf-token"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/posts").status_code == 200


def test_cli_user_add(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from central_sync.cli import main
    from central_sync.store import CentralStore
    from central_sync.users import RtRef, UserStore

    cfg = tmp_path / "central.toml"
    cfg.write_text('database = "central.db"\n[web]\nport = 0\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("a long rt password\n"))
    assert main(["user", "add", "ketua-rt3", "--role", "rt_admin", "--rt", "33.74.01.1001/5/3",
                 "--rt", "33.74.01.1001/5/4", "--config", str(cfg)]) == 0
    assert "ketua-rt3 (rt_admin" in capsys.readouterr().out
    pw = tmp_path / "pw"
    pw.write_text("operator password\n")
    assert main(["user", "add", "op", "--role", "operator", "--password-file", str(pw),
                 "--config", str(cfg)]) == 0
    assert main(["user", "add", "bad", "--role", "rt_admin", "--rt", "nonsense",
                 "--password-file", str(pw), "--config", str(cfg)]) == 1
    store = CentralStore(tmp_path / "central.db")
    try:
        users = UserStore(store.desk())
        rt = users.verify("ketua-rt3", "a long rt password")
        assert rt.rts == {RtRef("33.74.01.1001", 5, 3), RtRef("33.74.01.1001", 5, 4)}
        assert users.verify("op", "operator password").role is Role.OPERATOR
        assert users.get("bad") is None
    finally:
        store.close()
