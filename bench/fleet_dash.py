"""bench/fleet.py's operators: each dashboard does what the desk's page does in a browser
(``central_sync/web/templates/base.html``, ``dashboard.html`` and their scripts in
``central_sync/web/static/``), nothing more and nothing less:

* page load: ``GET /`` once, then its scripts, style sheet and alarm sound (a browser caches
  those: fetched once);
* ``live.js``: one ``EventSource`` on ``/api/stream?last_event_id=<the page's stream_head>``;
* ``dashboard.js``: per ``incident`` event the row it carries, or (a server whose events carry
  none) ``GET /fragments/incidents/<id>`` (no coalescing, as the script); per ``resync`` (and
  per reconnect) ``GET /fragments/queue``;
* ``attention.js``: ``GET /fragments/attention`` on load, per ``resync`` / reconnect and per
  ``incident`` that can touch the banner (a P1, one on the banner, or any while a read is in
  flight), at most one in flight and one more queued behind it (its ``fetching``/``again``),
  revalidated with the ETag the server gave (``cache: "no-cache"``: a 304 keeps the stored body);
* ``link.js``: ``GET /api/central-link`` on load and every 5 s.

Which of these the page does is read from the scripts the server serves, so the same bench
measures an older server with its own page. The page never polls ``/`` or ``/api/nodes``
(``/api/nodes`` is for API clients; the post overview ``/posts`` is a server-rendered page an
operator opens by hand). Requests go over
keep-alive HTTP/1.1 connections, at most 5 at a time beside the stream (a browser's 6 per
host). Latency is measured from sending a request to having its whole body; a request waiting
for a free connection is counted in ``backlog_max`` (the browser's own queue).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import re
import threading
import time
from collections.abc import Callable

#: What the page loads once besides ``/`` (base.html, dashboard.html).
ASSETS = ("/static/app.css", "/static/common.js", "/static/live.js", "/static/attention.js",
          "/static/link.js", "/static/dashboard.js", "/sounds/alarm.wav")
CONNECTIONS = 5  # a browser's 6 per host, one of them the stream
LINK_POLL_S = 5.0  # link.js


def path_key(path: str) -> str:
    """The path with ids and queries folded, for the per-path table."""
    path = path.split("?", 1)[0]
    if path.startswith("/fragments/incidents/"):
        return "/fragments/incidents/{id}"
    if path.startswith(("/static/", "/sounds/")):
        return "(assets)"
    return path


class Browser:
    """One operator's desk page."""

    def __init__(self, owner: Dashboards) -> None:
        self.owner = owner
        self.port = owner.port
        self.cookie = ""
        self.work: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.workers = [threading.Thread(target=self._worker, daemon=True) for _ in range(CONNECTIONS)]
        self.attention_lock = threading.Lock()
        self.attention_busy = self.attention_again = False
        self.stream_conn: http.client.HTTPConnection | None = None
        self.last_id = ""
        self.waiting: set[str] = set()  # attention.js ``waiting`` (incident ids)
        self.http_cache: dict[str, tuple[str, bytes]] = {}  # the browser's HTTP cache: path -> (ETag, body)
        self.row_in_event = self.attention_filter = self.revalidate_attention = False

    # -- HTTP ------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def _get(self, conn: http.client.HTTPConnection, path: str, revalidate: bool = False) -> tuple[int, bytes]:
        """GET ``path``; ``revalidate``: as ``fetch(..., {cache: "no-cache"})``, the stored
        body's ETag goes along and a 304 gives the stored body back."""
        headers = {"Cookie": self.cookie}
        cached = self.http_cache.get(path) if revalidate else None
        if cached is not None:
            headers["If-None-Match"] = cached[0]
        t0 = time.monotonic()
        for attempt in (1, 2):
            reused = conn.sock is not None
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # reconnects on the next request
                # the server closed an idle keep-alive connection (uvicorn: after 5 s): a
                # browser sends the request again on a new one
                if attempt == 1 and reused:
                    continue
                self.owner.error(f"{path_key(path)}: {type(exc).__name__}")
                return 0, b""
        self.owner.record(path, time.monotonic() - t0)
        if resp.status == 304 and cached is not None:
            self.owner.not_modified += 1
            return 200, cached[1]
        if resp.status >= 400:
            self.owner.error(f"{path_key(path)}: {resp.status}")
        etag = resp.getheader("ETag")
        if revalidate and etag and resp.status == 200:
            self.http_cache[path] = (etag, body)
        return resp.status, body

    def _login(self) -> None:
        conn = self._connection()
        body = json.dumps({"username": "bench", "password": "bench-password-123"})
        conn.request("POST", "/api/login", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        cookies = [v.split(";", 1)[0] for k, v in resp.getheaders() if k.lower() == "set-cookie"]
        if resp.status != 200 or not cookies:
            raise RuntimeError(f"login failed: {resp.status}")
        self.cookie = "; ".join(cookies)
        conn.close()

    def _worker(self) -> None:
        conn = self._connection()
        local.conn = conn
        while True:
            job = self.work.get()
            if job is None:
                break
            self.owner.backlog_max = max(self.owner.backlog_max, self.work.qsize())
            try:
                job()
            except Exception as exc:
                self.owner.error(f"job: {type(exc).__name__}")
        conn.close()

    def fetch(self, path: str, then: Callable[[int, bytes], None] | None = None, revalidate: bool = False) -> None:
        """Queue a GET like the page's ``fetch``: sent on the next free connection."""
        def job() -> None:
            status, body = self._get(local.conn, path, revalidate)
            if then is not None:
                then(status, body)
        self.work.put(job)

    # -- the page's scripts ----------------------------------------------------------------
    def attention(self) -> None:
        """attention.js ``refresh``: one in flight, one more queued behind it at most."""
        with self.attention_lock:
            if self.attention_busy:
                self.attention_again = True
                return
            self.attention_busy = True

        def done(status: int, body: bytes) -> None:
            if status == 200:
                self.waiting = {str(w.get("incident_id")) for w in json.loads(body)}
            with self.attention_lock:
                self.attention_busy = False
                again, self.attention_again = self.attention_again, False
            if again:
                self.attention()
        self.fetch("/fragments/attention", done, revalidate=self.revalidate_attention)

    def on_event(self, kind: str, data: str) -> None:
        if kind == "incident":
            self.owner.stream_events += 1
            inc = json.loads(data)
            if not (self.row_in_event and inc.get("row")):
                self.fetch(f"/fragments/incidents/{inc['incident_id']}")
            if not self.attention_filter or inc.get("priority") == 1 or self.attention_busy \
                    or inc["incident_id"] in self.waiting:
                self.attention()
        elif kind == "resync":
            self.owner.resyncs += 1
            self.fetch("/fragments/queue")
            self.attention()

    def stream(self) -> None:
        """live.js: EventSource with replay from the last id, reconnecting after a failure."""
        first = True
        while not self.owner.stop.is_set():
            conn = self.stream_conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                query = f"?last_event_id={self.last_id}" if self.last_id else ""
                conn.request("GET", "/api/stream" + query,
                             headers={"Cookie": self.cookie, "Accept": "text/event-stream"})
                resp = conn.getresponse()
                kind, data = "message", []
                while not self.owner.stop.is_set():
                    line = resp.readline()
                    if not line:
                        break
                    text = line.decode().rstrip("\r\n")
                    if text:
                        field, _, value = text.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if field == "event":
                            kind = value
                        elif field == "data":
                            data.append(value)
                        elif field == "id":
                            self.last_id = value
                        continue
                    if kind == "hello" and not first:  # a reconnect: dashboard.js resyncs
                        self.owner.resyncs += 1
                        self.fetch("/fragments/queue")
                        self.attention()
                    elif kind == "hello":
                        first = False
                    else:
                        self.on_event(kind, "\n".join(data))
                    kind, data = "message", []
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                conn.close()
            if not self.owner.stop.is_set():
                self.owner.stream_drops += 1
                self.owner.stop.wait(1.0)

    def link(self) -> None:
        while not self.owner.stop.wait(LINK_POLL_S):
            self.fetch("/api/central-link")

    def run(self) -> None:
        try:
            self._login()
        except Exception as exc:
            self.owner.error(f"login: {type(exc).__name__}")
            return
        for t in self.workers:
            t.start()
        loaded = threading.Event()
        head: list[str] = []

        def page(status: int, body: bytes) -> None:
            found = re.search(rb'id="desk-config">(.*?)</script>', body)
            if status == 200 and found:
                stream_head = json.loads(found.group(1)).get("stream_head")
                head.append("" if stream_head is None else str(stream_head))
            loaded.set()
        self.fetch("/", page)
        loaded.wait(60)
        self.last_id = head[0] if head else ""
        scripts: dict[str, bytes] = {}
        fetched = threading.Semaphore(0)

        def keep(asset: str) -> Callable[[int, bytes], None]:
            def then(_status: int, body: bytes) -> None:
                scripts[asset] = body
                fetched.release()
            return then
        for asset in ASSETS:
            self.fetch(asset, keep(asset))
        for _ in ASSETS:
            fetched.acquire(timeout=60)
        # What the served scripts do (this bench also measures servers with older scripts):
        dashboard_js, attention_js = scripts.get("/static/dashboard.js", b""), scripts.get("/static/attention.js", b"")
        self.row_in_event = b"inc.row" in dashboard_js  # the stream's event carries the row
        self.attention_filter = b"inc.priority === 1" in attention_js  # only changes that can touch the banner
        self.revalidate_attention = b'cache: "no-cache"' in attention_js  # If-None-Match, 304
        threading.Thread(target=self.stream, daemon=True).start()
        self.attention()
        self.fetch("/api/central-link")
        self.link()

    def close(self) -> None:
        for _ in self.workers:
            self.work.put(None)
        conn = self.stream_conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(2)


local = threading.local()


class Dashboards:
    """``n`` logged-in operators with the desk's queue page open (see the module docstring);
    GET latencies in seconds, overall and by path."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.latencies: list[float] = []
        self.by_path: dict[str, list[float]] = {}
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.stream_events = 0
        self.resyncs = 0
        self.stream_drops = 0
        self.backlog_max = 0
        self.not_modified = 0
        self.stop = threading.Event()
        self.browsers = [Browser(self) for _ in range(n)]
        self.threads = [threading.Thread(target=b.run, daemon=True) for b in self.browsers]

    def error(self, what: str) -> None:
        self.errors += 1
        self.error_kinds[what] = self.error_kinds.get(what, 0) + 1

    def record(self, path: str, seconds: float) -> None:
        if self.stop.is_set():
            return
        self.latencies.append(seconds)
        self.by_path.setdefault(path_key(path), []).append(seconds)

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def summary(self) -> dict[str, object]:
        return {"stream_events": self.stream_events, "resyncs": self.resyncs,
                "stream_drops": self.stream_drops, "backlog_max": self.backlog_max,
                "not_modified": self.not_modified, "errors": self.error_kinds}

    def close(self) -> None:
        self.stop.set()
        for b in self.browsers:
            b.close()
        for t in self.threads:
            t.join(5)
