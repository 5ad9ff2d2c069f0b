"""Fetch releases from central's release server: mutual TLS with the post's own certificate,
resumable (HTTP Range) and rate-limited so the download never competes with events and
snapshots on a thin uplink.

Rate limit: a token bucket in bytes/s on the post (``rate_bytes_per_s``, burst one second). A
library (e.g. ``pyrate-limiter``) was considered; for one reader thread pacing ``recv`` calls the
twenty lines here are simpler than its clock/bucket back-end set-up and add no dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.update import UpdateError
from edge.update.manifest import FileEntry

CHUNK = 16 * 1024


class TokenBucket:
    """``consume(n)`` blocks until ``n`` bytes fit in a ``rate``/s budget (burst = 1 s)."""

    def __init__(self, rate: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.capacity = max(self.rate, float(CHUNK))
        self.tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()

    def consume(self, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            now = self._clock()
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now
            if self.tokens >= n:
                self.tokens -= n
                return
            self._sleep((n - self.tokens) / self.rate)


@dataclass(frozen=True)
class ServerTls:
    ca_file: Path
    cert_file: Path
    key_file: Path


class ReleaseClient:
    """HTTPS client of ``kentongan-central release serve`` (one connection per request)."""

    def __init__(self, base_url: str, tls: ServerTls, *, rate_bytes_per_s: float = 0,
                 timeout: float = 30.0) -> None:
        url = urlsplit(base_url)
        if url.scheme != "https" or not url.hostname:
            raise UpdateError("server", f"release server must be an https:// URL, not {base_url!r}")
        self.host, self.port = url.hostname, url.port or 443
        self.prefix = url.path.rstrip("/")
        self.timeout = timeout
        self.bucket = TokenBucket(rate_bytes_per_s)
        ctx = ssl.create_default_context(cafile=str(tls.ca_file))
        try:
            ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        except (OSError, ssl.SSLError) as exc:
            raise UpdateError("server", f"cannot load the post's certificate: {exc}") from None
        self.ctx = ctx

    def _conn(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=self.timeout)

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse,
                                                                 http.client.HTTPSConnection]:
        conn = self._conn()
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers or {})
            return conn.getresponse(), conn
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            conn.close()
            raise UpdateError("server", f"release server {self.host}:{self.port}: {exc}") from None

    def get_json(self, path: str) -> dict[str, Any]:
        resp, conn = self._request("GET", path)
        try:
            data = resp.read(1 << 20)
            if resp.status != 200:
                raise UpdateError("server", f"GET {path}: HTTP {resp.status} {data[:200]!r}")
            out = json.loads(data)
            if not isinstance(out, dict):
                raise ValueError("not an object")
            return out
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise UpdateError("server", f"GET {path}: {exc}") from None
        finally:
            conn.close()

    def get_bytes(self, path: str, limit: int = 1 << 20) -> bytes:
        resp, conn = self._request("GET", path)
        try:
            data = resp.read(limit + 1)
            if resp.status != 200:
                raise UpdateError("server", f"GET {path}: HTTP {resp.status}")
            if len(data) > limit:
                raise UpdateError("server", f"GET {path}: larger than {limit} bytes")
            return data
        except (OSError, http.client.HTTPException) as exc:
            raise UpdateError("server", f"GET {path}: {exc}") from None
        finally:
            conn.close()

    def current(self, running: str | None) -> dict[str, Any]:
        return self.get_json("/v1/current" + (f"?running={running}" if running else ""))

    def report(self, version: str, state: str, reason: str = "") -> dict[str, Any]:
        body = json.dumps({"version": version, "state": state, "reason": reason[:500]}).encode()
        resp, conn = self._request("POST", "/v1/report", body,
                                   {"Content-Type": "application/json"})
        try:
            data = resp.read(1 << 16)
            if resp.status != 200:
                raise UpdateError("server", f"report: HTTP {resp.status} {data[:200]!r}")
            return dict(json.loads(data))
        except (ValueError, OSError, http.client.HTTPException) as exc:
            raise UpdateError("server", f"report: {exc}") from None
        finally:
            conn.close()

    def download(self, path: str, dest: Path, entry: FileEntry,
                 progress: Callable[[int], None] | None = None) -> Path:
        """Download into ``dest`` resuming ``dest.part``; verify size and SHA-256, fsync, rename.

        ``truncated`` when the server ends early, ``hash_mismatch`` when the bytes differ from
        the manifest (the partial file is then deleted: the next try starts over)."""
        part = dest.with_name(dest.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > entry.size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        if have < entry.size:
            resp, conn = self._request("GET", path, headers=headers)
            try:
                if resp.status == 200:
                    have = 0  # server ignored the range: start over
                elif not (resp.status == 206 and have):
                    raise UpdateError("server", f"GET {path}: HTTP {resp.status}")
                mode = "ab" if have else "wb"
                with part.open(mode) as fh:
                    while have < entry.size:
                        self.bucket.consume(CHUNK)
                        try:
                            chunk = resp.read(CHUNK)
                        except (OSError, http.client.HTTPException) as exc:
                            raise UpdateError("truncated", f"{dest.name}: connection lost "
                                              f"after {have} of {entry.size} bytes: {exc}") from None
                        if not chunk:
                            break
                        fh.write(chunk)
                        have += len(chunk)
                        if progress is not None:
                            progress(have)
                    fh.flush()
                    os.fsync(fh.fileno())
            finally:
                conn.close()
        if have < entry.size:
            raise UpdateError("truncated", f"{dest.name}: got {have} of {entry.size} bytes "
                              "(resumes on the next try)")
        digest = hashlib.sha256()
        with part.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if part.stat().st_size != entry.size or digest.hexdigest() != entry.sha256:
            part.unlink()
            raise UpdateError("hash_mismatch", f"{dest.name}: SHA-256 {digest.hexdigest()[:16]}"
                              f"... does not match the manifest's {entry.sha256[:16]}...")
        os.replace(part, dest)
        return dest
