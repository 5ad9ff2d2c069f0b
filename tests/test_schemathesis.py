"""Property-based API test: schemathesis drives every /api operation (authenticated, bounded)
and no request makes the server fail with a 5xx."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from central_sync.web.testing import WebEnv, event

_tmp = Path(tempfile.mkdtemp(prefix="kentongan-st-"))
ENV = WebEnv(_tmp / "central.db", {"login_limit": 1000})
ENV.node("pos-a")
ENV.node("pos-b", "33.74.01.1001/5/4")
ENV.user("op", "operator")
ENV.user("root", "admin")
ENV.events(event("pos-a", "PANIC", payload={"reporter": "x"}), event("pos-b", "KEBAKARAN"))
CLIENT, CSRF = ENV.client("root")
COOKIES = dict(CLIENT.cookies.items())

STATUSES: list[int] = []
schema = schemathesis.openapi.from_asgi("/openapi.json", ENV.app)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    ENV.close()
    shutil.rmtree(_tmp, ignore_errors=True)


def test_openapi_lists_the_json_api() -> None:
    paths = CLIENT.get("/openapi.json").json()["paths"]
    assert "/api/incidents/{incident_id}/ack" in paths and "/api/cap/{incident_id}" in paths
    assert all(p.startswith("/api/") for p in paths)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_api_never_fails_with_5xx(case: schemathesis.Case) -> None:
    if case.path == "/api/login":
        return   # logging in with random names would only hit the rate limiter
    response = case.call(headers={"X-CSRF-Token": CSRF}, cookies=COOKIES)
    STATUSES.append(response.status_code)
    case.validate_response(response, checks=[not_a_server_error])


def test_generated_calls_were_authenticated() -> None:
    """The run above really exercised the API as a logged-in admin (not just 401s)."""
    assert STATUSES and 200 in STATUSES
    assert STATUSES.count(401) < len(STATUSES) / 2
