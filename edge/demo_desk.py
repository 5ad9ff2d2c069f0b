"""The demo reads the desk as an operator's browser does: logged in over HTTP (``/api/login``),
then the post's supervision state and the open incidents. Standard library only."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from typing import Any


class DeskReader:
    def __init__(self, port: int, user: str, password: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.user, self.password = user, password
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.logged_in = False

    def _request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with self.opener.open(req, timeout=10) as resp:
            return json.loads(resp.read())

    def get(self, path: str) -> Any:
        """JSON of ``path`` (logging in first); None while the desk cannot answer."""
        try:
            if not self.logged_in:
                self._request("/api/login", {"username": self.user, "password": self.password})
                self.logged_in = True
            return self._request(path)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def post_status(self, node_id: str) -> str | None:
        got = self.get(f"/api/nodes/{node_id}/supervision")
        return None if got is None else str(got.get("status"))

    def offline_incident(self, node_id: str) -> dict[str, Any] | None:
        got = self.get("/api/incidents?open_only=true") or []
        return next((i for i in got if i.get("type") == "POST_OFFLINE" and i.get("node_id") == node_id), None)

    def central_blind(self) -> bool | None:
        got = self.get("/api/central-link")
        return None if got is None else bool(got.get("blind"))
