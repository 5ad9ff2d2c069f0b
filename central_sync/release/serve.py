"""``kentongan-central release serve``: the HTTPS server posts fetch releases from.

Mutual TLS with central's CA: the server presents ``release-server.crt`` and REQUIRES a client
certificate issued by the CA (``ssl.CERT_REQUIRED``); the certificate's CN is the node id (the
same identity the broker uses), checked against the CRL when ``crl.pem`` exists. Standard library
``http.server`` with one thread per connection: uvicorn/ASGI does not hand the application the
peer certificate, and this server needs it for every request (ring, reports).

Endpoints (JSON unless a file)::

    GET  /v1/current?running=0.1.0        -> {"node_id", "ring", "version": "0.2.0" | null}
    GET  /v1/releases/<version>/manifest.json | manifest.sig
    GET  /v1/releases/<version>/wheels/<file.whl>     (Range: bytes=N- supported, 206)
    POST /v1/report  {"version", "state", "reason"}   -> {"rollout": status}
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from central_sync.release import ReleaseError
from central_sync.release.manifest import MANIFEST, SIGNATURE, WHEELS
from central_sync.release.rollout import RolloutStore
from edge.logs import log_event
from edge.update.manifest import FILE_RE, VERSION_RE

log = logging.getLogger("central_sync.release.serve")

CHUNK = 64 * 1024
MAX_BODY = 16 * 1024
PATH_RE = re.compile(r"^/v1/releases/(?P<version>[0-9.]{1,40})/(?P<file>manifest\.json|manifest\.sig"
                     r"|wheels/[A-Za-z0-9_.+-]{1,200}\.whl)$")


def server_context(ca_file: Path, cert_file: Path, key_file: Path,
                   crl_file: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_file), str(key_file))
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    if crl_file is not None and crl_file.exists():
        ctx.load_verify_locations(cafile=str(crl_file))
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


class ReleaseServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], root: Path, rollouts: RolloutStore,
                 ctx: ssl.SSLContext) -> None:
        self.root = root
        self.rollouts = rollouts
        self.ctx = ctx
        super().__init__(addr, ReleaseHandler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(30)
        # A small answer goes out as two writes (headers, then body): without TCP_NODELAY
        # Nagle holds the body until the post's delayed ACK, about 40 ms of every request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS failures (no or foreign client certificate) and dropped downloads: one log line.
        log_event(log, "release_connection_error", logging.WARNING, peer=str(client_address))

    def serve_in_thread(self) -> threading.Thread:
        t = threading.Thread(target=self.serve_forever, name="release-server", daemon=True)
        t.start()
        return t


class ReleaseHandler(BaseHTTPRequestHandler):
    server: ReleaseServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        conn = self.connection
        try:
            conn.do_handshake()
        except (ssl.SSLError, OSError):
            log_event(log, "release_tls_refused", logging.WARNING,
                      peer=str(self.client_address[0]))
            self.close_connection = True
            self.rfile = self.wfile = _Closed()  # type: ignore[assignment]

    def _node_id(self) -> str | None:
        try:
            cert = self.connection.getpeercert()
        except (ValueError, AttributeError):
            return None
        for rdn in (cert or {}).get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    return str(v)
        return None

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        node = self._node_id()
        if node is None:
            self._json(HTTPStatus.FORBIDDEN, {"error": "client certificate required"})
            return
        url = urlsplit(self.path)
        if url.path == "/v1/current":
            given = parse_qs(url.query).get("running") or [""]
            running = given[0] if VERSION_RE.match(given[0]) else None
            store = self.server.rollouts
            store.seen(node, running)
            self._json(HTTPStatus.OK, {"node_id": node, "ring": store.ring_of(node),
                                       "version": store.target_for(node, running)})
            return
        m = PATH_RE.match(url.path)
        if m is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        name = m.group("file")
        if name.startswith("wheels/") and not FILE_RE.match(name[len("wheels/"):]):
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        path = self.server.root / m.group("version") / name
        if name.startswith("wheels/"):
            path = self.server.root / m.group("version") / WHEELS / name[len("wheels/"):]
        elif name not in (MANIFEST, SIGNATURE):
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        if not path.is_file():
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no {name} in release "
                                              f"{m.group('version')}"})
            return
        self._send_file(path)

    def _send_file(self, path: Path) -> None:
        size = path.stat().st_size
        start, status = 0, HTTPStatus.OK
        rng = self.headers.get("Range")
        if rng:
            rm = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            if rm is None or int(rm.group(1)) > size:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, status = int(rm.group(1)), HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(size - start))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with path.open("rb") as fh:
            fh.seek(start)
            while chunk := fh.read(CHUNK):
                self.wfile.write(chunk)

    def do_POST(self) -> None:
        node = self._node_id()
        if node is None:
            self._json(HTTPStatus.FORBIDDEN, {"error": "client certificate required"})
            return
        if urlsplit(self.path).path != "/v1/report":
            self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= MAX_BODY:
                raise ValueError("body size")
            body = json.loads(self.rfile.read(length))
            version, state = str(body["version"]), str(body["state"])
            reason = str(body.get("reason", ""))[:500]
            if not VERSION_RE.match(version):
                raise ValueError("version")
            r = self.server.rollouts.report(node, version, state, reason)
        except (ValueError, KeyError, TypeError, ReleaseError) as exc:
            log_event(log, "release_report_rejected", logging.WARNING, node_id=node,
                      error=str(exc)[:200])
            self._json(HTTPStatus.BAD_REQUEST, {"error": f"bad report: {exc}"})
            return
        log_event(log, "release_report", node_id=node, version=version, state=state,
                  reason=reason, rollout=None if r is None else r.status)
        self._json(HTTPStatus.OK, {"rollout": None if r is None else r.status,
                                   "halted_reason": None if r is None else r.halted_reason})


class _Closed:
    """Stands in for the streams of a connection whose TLS handshake failed."""

    def readline(self, *_a: Any) -> bytes:
        return b""

    def read(self, *_a: Any) -> bytes:
        return b""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
