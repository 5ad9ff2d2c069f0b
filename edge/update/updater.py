"""The updater: one pass (``check_once``) and the service loop (``run``).

One pass: ask central for this post's release (``/v1/current``), fetch and verify its signed
manifest, refuse a foreign signature, a downgrade or a release that cannot update from the
running version (nothing on the post changes then), download the missing wheels (resumable,
rate-limited, each checked against the manifest), install them into ``releases/<v>``, record
``trial`` in the state file, switch ``current``, restart the agent and run the health check.
Pass: ``good`` follows, older releases are pruned, central hears ``healthy``. Fail: ``current``
goes back to ``good``, the agent restarts on it, the version is never tried again, and the
reason reaches central (report + a SELFTEST event from the agent).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge.config_io import errors_of, read_toml
from edge.errors import ConfigError, ControlError, KentonganError
from edge.logs import log_event
from edge.update import UpdateError
from edge.update.fetch import ReleaseClient
from edge.update.health import AgentService, HealthChecker, Request
from edge.update.install import MANIFEST_COPY, InstallOptions, install_release
from edge.update.manifest import (
    Manifest,
    check_upgrade,
    machine,
    manifest_from_bytes,
    verify_manifest,
)
from edge.update.switch import Layout, UpdateState, recover

log = logging.getLogger("kentongan.update")


class UpdateConfig(BaseModel):
    """``/etc/kentongan/update.toml``: the updater's settings (relative paths: to this file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    server_url: str = Field(description="Central's release server, e.g. https://central:8443.")
    root: Path = Field(Path("/opt/kentongan"), description="Update root: releases/, current, "
                       "good, wheels/, update-state.json.")
    node_config: Path = Field(Path("/etc/kentongan/node.toml"), description="The agent's "
                              "config: its TLS files and state dir (control socket).")
    release_key_file: Path = Field(Path("/etc/kentongan/keys/release.pub"), description="The "
                                   "trusted release public key (kentongan-edge "
                                   "trust-release-key).")
    rate_bytes_per_s: int = Field(32 * 1024, ge=0, description="Download budget in bytes/s "
                                  "(0 = unlimited); keeps the uplink free for events.")
    poll_seconds: float = Field(3600.0, ge=5, description="How often to ask for the current "
                                "release (jittered +-20%); also at every start.")
    health_window_seconds: float = Field(300.0, gt=0, le=3600, description="Time the new "
                                         "version has to pass its check before rollback.")
    crash_loop_restarts: int = Field(3, ge=1, description="This many agent restarts ...")
    crash_loop_seconds: float = Field(120.0, gt=0, description="... within this many seconds "
                                      "is a crash loop: roll back.")
    python: str = Field("/usr/bin/python3", description="Interpreter of the release venvs.")
    system_site_packages: bool = Field(True, description="Release venvs see apt packages "
                                       "(python3-lgpio, python3-picamera2).")
    nice: int = Field(10, ge=0, le=19, description="Niceness of installs (ionice idle too).")


def load_update_config(path: Path) -> UpdateConfig:
    data = read_toml(path, ConfigError)
    base = path.resolve().parent
    for key in ("root", "node_config", "release_key_file"):
        if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
            data[key] = str(base / data[key])
    try:
        return UpdateConfig.model_validate(data)
    except ValidationError as exc:
        key, reason = errors_of(exc)[0]
        raise ConfigError(reason, key) from None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Updater:
    def __init__(self, layout: Layout, client: ReleaseClient, release_key: Ed25519PublicKey,
                 service: AgentService, request: Request, *, sync_enabled: bool,
                 install: InstallOptions, health_window: float = 300.0,
                 crash_loop_restarts: int = 3, crash_loop_seconds: float = 120.0,
                 platform: str | None = None) -> None:
        self.layout, self.client, self.key = layout, client, release_key
        self.service, self.request = service, request
        self.install_opts = install
        self.health_window = health_window
        self.platform = platform or machine()
        self.checker = HealthChecker(request, service, sync_enabled=sync_enabled,
                                     crash_loop_restarts=crash_loop_restarts,
                                     crash_loop_seconds=crash_loop_seconds)
        self.stop = threading.Event()

    # -- helpers -------------------------------------------------------------------------------

    def running(self) -> str | None:
        return self.layout.link_target(self.layout.current)

    def _report(self, st: UpdateState, version: str, state: str, reason: str = "") -> None:
        st.last_result = {"version": version, "state": state, "reason": reason, "at": time.time()}
        try:
            self.client.report(version, state, reason)
            st.last_result["reported"] = True
        except UpdateError as exc:
            st.last_result["reported"] = False
            log_event(log, "update_report_failed", logging.WARNING, error=str(exc))

    def _event(self, payload: dict[str, object]) -> None:
        """A SELFTEST event through the running agent so the desk sees what happened."""
        with contextlib.suppress(ControlError, OSError):
            self.request({"op": "record_selftest", "payload": payload}, 10)

    def fetch_manifest(self, version: str) -> Manifest:
        base = f"/v1/releases/{version}"
        data = self.client.get_bytes(f"{base}/manifest.json")
        sig = self.client.get_bytes(f"{base}/manifest.sig", limit=4096)
        m = verify_manifest(data, sig, self.key)
        if m.version != version:
            raise UpdateError("bad_manifest", f"asked for {version}, manifest says {m.version}")
        return m

    def download(self, m: Manifest) -> Path:
        """Every wheel of this platform, verified, hard-linked into a per-release find-links
        directory (pip sees exactly the manifest's files). Returns that directory."""
        self.layout.ensure()
        stage = self.layout.wheels / f"release-{m.version}"
        stage.mkdir(exist_ok=True)
        for name, entry in m.files_for(self.platform).items():
            dest = self.layout.wheels / name
            if dest.exists() and (dest.stat().st_size != entry.size or _sha256(dest) != entry.sha256):
                dest.unlink()
            if not dest.exists():
                if self.stop.is_set():
                    raise UpdateError("truncated", "stopping")
                self.client.download(f"/v1/releases/{m.version}/wheels/{name}", dest, entry)
            link = stage / name
            if not link.exists():
                os.link(dest, link)
        return stage

    # -- one pass ------------------------------------------------------------------------------

    def check_once(self) -> str:
        """One update pass; returns what happened (for the log and the CLI)."""
        st = self.layout.load_state()
        if st.phase == "trial" and st.target:
            return self._trial(st)
        if st.phase != "idle":
            recover(self.layout)
            st = self.layout.load_state()
        self._flush_report(st)
        running = self.running()
        info = self.client.current(running)
        target = info.get("version")
        if not target or target == running:
            return f"up to date ({running})"
        if target in st.failed:
            return f"{target} failed here before ({st.failed[target]}): staying on {running}"
        try:
            m = self.fetch_manifest(target)
            check_upgrade(m, running)
        except UpdateError as exc:
            log_event(log, "update_refused", logging.WARNING, version=target, reason=exc.reason,
                      error=str(exc))
            with contextlib.suppress(UpdateError):
                self.client.report(target, "refused", str(exc))
            raise
        stage = self.download(m)
        st.phase, st.target, st.previous = "installing", m.version, self.layout.link_target(
            self.layout.good)
        self.layout.save_state(st)
        try:
            install_release(Layout(self.layout.root), m, self._opts_for(stage))
        except UpdateError as exc:
            st.phase, st.target = "idle", None
            self._report(st, m.version, "failed", str(exc))
            self.layout.save_state(st)
            raise
        if st.previous is None:  # first install on this post: nothing to fall back to
            self.layout.set_link(self.layout.current, m.version)
            self.layout.set_link(self.layout.good, m.version)
            st.phase, st.target = "idle", None
            self.layout.save_state(st)
            self.service.restart()
            self._report(st, m.version, "healthy", "first install")
            self.layout.save_state(st)
            return f"installed {m.version} (first install)"
        st.phase, st.trial_started, st.attempts = "trial", time.time(), st.attempts + 1
        self.layout.save_state(st)
        self.layout.set_link(self.layout.current, m.version)
        log_event(log, "update_switched", version=m.version, previous=st.previous)
        self.service.restart()
        return self._trial(st)

    def _opts_for(self, stage: Path) -> InstallOptions:
        o = self.install_opts
        return InstallOptions(python=o.python, pip_python=o.pip_python,
                              system_site_packages=o.system_site_packages, nice=o.nice,
                              timeout=o.timeout, find_links=stage, compile=o.compile)

    def _trial(self, st: UpdateState) -> str:
        assert st.target is not None
        version = st.target
        elapsed = max(0.0, time.time() - (st.trial_started or time.time()))
        result = self.checker.check(version, max(1.0, self.health_window - elapsed))
        if result.ok:
            self.layout.set_link(self.layout.good, version)
            st.phase, st.target, st.previous, st.trial_started = "idle", None, None, None
            self.layout.save_state(st)
            self.layout.prune({version})
            self._prune_wheels(version)
            self._report(st, version, "healthy", result.reason)
            self.layout.save_state(st)
            log_event(log, "update_healthy", version=version, seconds=round(result.seconds, 1))
            return f"updated to {version}: {result.reason}"
        return self.rollback(st, result.reason)

    def _prune_wheels(self, version: str) -> None:
        """Keep only the wheels of the good release (the next app-only update reuses them)."""
        try:
            m = manifest_from_bytes((self.layout.release(version) / MANIFEST_COPY).read_bytes())
            keep = set(m.files_for(self.platform))
        except (OSError, UpdateError):
            return
        for p in self.layout.wheels.iterdir():
            if p.is_dir() and p.name.startswith("release-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_file() and p.name not in keep and not p.name.endswith(".part"):
                p.unlink(missing_ok=True)

    def rollback(self, st: UpdateState, reason: str) -> str:
        version = st.target or "?"
        back = self.layout.link_target(self.layout.good)
        st.phase = "rolling_back"
        st.failed[version] = reason
        self.layout.save_state(st)
        if back is not None:
            self.layout.set_link(self.layout.current, back)
        self.service.restart()
        st.phase, st.target, st.trial_started = "idle", None, None
        self.layout.save_state(st)
        log_event(log, "update_rolled_back", logging.ERROR, version=version, back_to=back,
                  reason=reason)
        self._report(st, version, "rolled_back", reason)
        self.layout.save_state(st)
        self._wait_agent_then_event({"kind": "update", "ok": False, "version": version,
                                     "rolled_back_to": back, "reason": reason})
        return f"rolled back from {version} to {back}: {reason}"

    def _wait_agent_then_event(self, payload: dict[str, object]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if self.request({"op": "status"}, 5).get("ok"):
                    break
            except (ControlError, OSError):
                pass
            time.sleep(0.5)
        self._event(payload)

    def _flush_report(self, st: UpdateState) -> None:
        last = st.last_result
        if last.get("reported") is False and last.get("version") and last.get("state"):
            try:
                self.client.report(str(last["version"]), str(last["state"]),
                                   str(last.get("reason", "")))
                last["reported"] = True
                self.layout.save_state(st)
            except UpdateError:
                pass

    def run(self, poll_seconds: float) -> None:
        """The service loop: a pass at start, then every ``poll_seconds`` (jittered)."""
        while not self.stop.is_set():
            try:
                outcome = self.check_once()
                log_event(log, "update_pass", outcome=outcome)
            except KentonganError as exc:
                log_event(log, "update_pass_failed", logging.WARNING, error=str(exc))
            self.stop.wait(poll_seconds * random.uniform(0.8, 1.2))
