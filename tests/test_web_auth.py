"""Login, sessions, CSRF and login rate limiting of the web app (real HTTP, real SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import extract_parameters
from argon2.profiles import RFC_9106_LOW_MEMORY
from fastapi.testclient import TestClient

from central_sync.errors import AuthError
from central_sync.store import CentralStore
from central_sync.users import DEFAULT_HASHER, Role, UserStore
from central_sync.web.app import context_of, create_app
from central_sync.web.auth import COOKIE, LOGIN_CSRF_COOKIE
from central_sync.web.testing import CHEAP_HASHER, RecordingSender, WebEnv, event


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


def test_central_hashes_at_the_production_cost_and_only_the_harness_cheaply(tmp_path: Path) -> None:
    """WebEnv's cheap hasher is the harness's alone: the app and the CLI's UserStore hash with
    argon2id at RFC 9106's low-memory profile, and either kind of stored hash is checked by
    either store (a hash carries its own parameters)."""
    store = CentralStore(tmp_path / "central.db")
    try:
        ctx = context_of(create_app({"web": {}}, store, RecordingSender(), follow_changes=False))
        assert ctx.users.hasher is DEFAULT_HASHER and UserStore(store.desk()).hasher is DEFAULT_HASHER
        ctx.users.add("op", "operator", WebEnv.PASSWORD)
        UserStore(store.desk(), CHEAP_HASHER).add("cheap", "operator", WebEnv.PASSWORD)
        params = {n: extract_parameters(store.desk().user(n)["password_hash"]) for n in ("op", "cheap")}
        assert params["op"] == RFC_9106_LOW_MEMORY and params["cheap"].time_cost == 1
        assert ctx.users.verify("cheap", WebEnv.PASSWORD).name == "cheap"
        assert UserStore(store.desk(), CHEAP_HASHER).verify("op", WebEnv.PASSWORD).name == "op"
        with pytest.raises(AuthError):
            ctx.users.verify("op", "not the password")
    finally:
        store.close()


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


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _limited(env: WebEnv) -> FakeClock:
    from central_sync.web.auth import LoginLimiter

    clock = FakeClock()
    env.ctx.limiter = LoginLimiter(env.ctx.tables, env.ctx.settings, clock=clock)
    return clock


def _login(client: TestClient, user: str, password: str) -> Any:
    return client.post("/api/login", json={"username": user, "password": password})


def test_guessing_slows_that_user_at_that_address_and_not_the_owner(env: WebEnv) -> None:
    clock = _limited(env)
    attacker = TestClient(env.app, client=("203.0.113.7", 40000))
    owner = TestClient(env.app, client=("198.51.100.2", 40000))
    for _ in range(5):                                  # login_limit free failures
        assert _login(attacker, "op", "wrong password!").status_code == 401
    r = _login(attacker, "op", WebEnv.PASSWORD)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    # the owner, from their own address, is not slowed at all
    assert _login(owner, "op", WebEnv.PASSWORD).status_code == 200
    # nor is another account from the attacker's address (no per-address lock at this level)
    assert _login(attacker, "op2", WebEnv.PASSWORD).status_code == 200
    # growing delay for the guesser: 1, 2, 4, 8 ... seconds after each failure
    delays = []
    for _ in range(6):
        r = _login(attacker, "op", "wrong password!")
        assert r.status_code == 429
        wait = int(r.headers["retry-after"])
        delays.append(wait)
        clock.now += wait
        assert _login(attacker, "op", "wrong password!").status_code == 401
    assert delays == [1, 2, 4, 8, 16, 32]
    # capped at login_window_s (300 s)
    for _ in range(6):
        clock.now += 300
        assert _login(attacker, "op", "wrong password!").status_code == 401
    assert int(_login(attacker, "op", "x").headers["retry-after"]) == 300
    # once the delay has passed the right password works from there too, and resets it
    clock.now += 300
    assert _login(attacker, "op", WebEnv.PASSWORD).status_code == 200
    assert _login(attacker, "op", "wrong password!").status_code == 401
    assert _login(attacker, "op", WebEnv.PASSWORD).status_code == 200
    # The HTML form is limited the same way.
    for _ in range(5):
        _login(attacker, "op", "wrong password!")
    page = attacker.get("/login")
    token = page.cookies.get(LOGIN_CSRF_COOKIE) or attacker.cookies.get(LOGIN_CSRF_COOKIE)
    r = attacker.post("/login", data={"username": "op", "password": WebEnv.PASSWORD,
                                      "csrf_token": token})
    assert r.status_code == 429 and "too many" in r.text


def test_address_ceiling_across_user_names(tmp_path: Path) -> None:
    # A low ceiling (the default is 50): every failed login costs an argon2 verification.
    env = WebEnv(tmp_path / "ceiling.db", {"login_limit": 5, "login_window_s": 300, "login_address_limit": 8})
    try:
        env.user("op", "operator")
        _address_ceiling(env)
    finally:
        env.close()


def _address_ceiling(env: WebEnv) -> None:
    clock = _limited(env)
    sprayer = TestClient(env.app, client=("203.0.113.9", 40000))
    limit = env.ctx.settings.login_address_limit
    assert limit == 8
    for i in range(limit):
        assert _login(sprayer, f"user{i}", "wrong password!").status_code == 401
    r = _login(sprayer, "op", WebEnv.PASSWORD)
    assert r.status_code == 429 and 0 < int(r.headers["retry-after"]) <= 300
    assert _login(TestClient(env.app, client=("198.51.100.2", 1)), "op",
                  WebEnv.PASSWORD).status_code == 200
    clock.now += 301
    assert _login(sprayer, "op", WebEnv.PASSWORD).status_code == 200


def test_login_form_needs_its_csrf_token(env: WebEnv) -> None:
    c = TestClient(env.app)
    page = c.get("/login")
    token = c.cookies.get(LOGIN_CSRF_COOKIE)
    assert token and f'name="csrf_token" value="{token}"' in page.text
    assert "samesite=strict" in page.headers["set-cookie"].lower()
    form = {"username": "op", "password": WebEnv.PASSWORD}
    # no token, a forged one, or a token without its cookie (another browser): refused
    r = c.post("/login", data=form, follow_redirects=False)
    assert r.status_code == 403 and c.cookies.get(COOKIE) is None
    c.get("/login")
    assert c.post("/login", data={**form, "csrf_token": "forged"},
                  follow_redirects=False).status_code == 403
    other = TestClient(env.app)
    assert other.post("/login", data={**form, "csrf_token": token},
                      follow_redirects=False).status_code == 403
    # a cross-site form cannot post JSON: /api/login refuses anything but application/json
    r = c.post("/api/login", content=b'{"username": "op", "password": "correct horse battery"}',
               headers={"content-type": "text/plain"})
    assert r.status_code == 422 and c.cookies.get(COOKIE) is None
    c.get("/login")
    r = c.post("/login", data={**form, "csrf_token": c.cookies.get(LOGIN_CSRF_COOKIE)},
               follow_redirects=False)
    assert r.status_code == 303 and c.cookies.get(COOKIE)


def test_html_login_form_and_pages(env: WebEnv) -> None:
    c = TestClient(env.app)
    assert c.get("/login").status_code == 200
    r = c.post("/login", data={"username": "op", "password": WebEnv.PASSWORD,
                               "csrf_token": c.cookies.get(LOGIN_CSRF_COOKIE)},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/"
    page = c.get("/")
    assert page.status_code == 200 and 'name="csrf-token"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/posts").status_code == 200


def test_audit_log_records_commands_and_is_admin_only(env: WebEnv) -> None:
    env.user("boss", "admin")
    op, csrf = env.client("op")
    assert op.post("/api/nodes/pos-a/test", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert op.get("/api/audit-log").status_code == 403
    boss, _ = env.client("boss")
    rows = boss.get("/api/audit-log").json()
    assert rows[0]["actor"] == "op" and rows[0]["action"] == "command_test"
    assert rows[0]["target"] == "pos-a" and rows[0]["detail"]["role"] == "operator"
    assert rows[0]["client"] == "testclient"


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
    from central_sync.audit import AuditLog

    store = CentralStore(tmp_path / "central.db")
    try:
        [row] = AuditLog(store.audit_tables()).recent()
    finally:
        store.close()
    assert row["action"] == "user_add" and row["target"] == "ketua-rt3"
    assert row["actor"].startswith("cli:") and row["detail"]["role"] == "rt_admin"
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


def test_cli_user_remove_and_set_role_are_audited_and_take_effect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from central_sync.cli import main

    cfg = tmp_path / "central.toml"
    cfg.write_text('database = "central.db"\n[web]\nport = 0\n')
    env = WebEnv(tmp_path / "central.db")
    try:
        env.user("op", "operator")
        env.user("boss", "admin")
        op, _ = env.client("op")
        boss, _ = env.client("boss")
        assert op.get("/api/audit-log").status_code == 403
        assert main(["user", "set-role", "op", "--role", "admin", "--config", str(cfg)]) == 0
        assert op.get("/api/me").json()["role"] == "admin"            # next request
        assert op.get("/api/audit-log").status_code == 200
        assert main(["user", "remove", "op", "--config", str(cfg)]) == 0
        assert op.get("/api/me").status_code == 401                   # session ended
        assert env.anon.post("/api/login", json={"username": "op", "password": WebEnv.PASSWORD}
                             ).status_code == 401
        assert main(["user", "remove", "op", "--config", str(cfg)]) == 1
        assert main(["user", "set-role", "boss", "--role", "rt_admin", "--config", str(cfg)]) == 1
        monkeypatch.setattr("sys.stdin", io.StringIO("another long password\n"))
        assert main(["user", "add", "op", "--role", "operator", "--config", str(cfg)]) == 0
        rows = [(r["action"], r["target"]) for r in env.ctx.audit.recent()]
        assert rows[:3] == [("user_add", "op"), ("user_remove", "op"), ("user_role", "op")]
        assert [r["action"] for r in boss.get("/api/audit-log").json()][:3] == \
            ["user_add", "user_remove", "user_role"]
    finally:
        env.close()
