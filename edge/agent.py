"""The node agent: wires hardware, alarm engine, outbox, snapshots, sync and the control socket
together and runs them on one asyncio loop until SIGTERM. The control socket's operations are
``edge.agent_control``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import __version__
from edge.agent_control import control_handlers
from edge.alarm import AlarmEngine
from edge.clock import Clock
from edge.commands import NodeCommands
from edge.config import NodeConfig
from edge.control import ControlServer, socket_path
from edge.drivers.buttons import ButtonSignal, ButtonWatcher
from edge.drivers.camera import capture_burst
from edge.errors import KentonganError
from edge.hardware import Hardware, build_hardware
from edge.incidents import Priority, SystemEvent
from edge.logs import RateLimitedLog, log_event, set_node_id
from edge.outbox import EventDraft, Outbox, StorageQuota, StoredEvent
from edge.security_hooks import SecurityHooks, load_security_hooks
from edge.siren_tests import SirenTester, build_tester
from edge.snapshots import SnapshotStore

if TYPE_CHECKING:
    from edge.sync.service import SyncService

log = logging.getLogger("kentongan.agent")

MAINTENANCE_SECONDS = 60.0
STOP_TIMEOUT_S = 15.0


class Agent:
    """One running post. ``await agent.run(stop)`` until ``stop`` is set."""

    def __init__(self, cfg: NodeConfig, *, simulate: bool = False) -> None:
        self.cfg = cfg
        self.simulate = simulate
        self.clock = Clock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hw: Hardware | None = None
        self.outbox: Outbox | None = None
        self.snapshots: SnapshotStore | None = None
        self.engine: AlarmEngine | None = None
        self.buttons: dict[str, ButtonWatcher] = {}
        self.sync: SyncService | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.security: SecurityHooks = SecurityHooks()
        self._tasks: list[asyncio.Task[Any]] = []
        # None, not 0.0: time.monotonic() counts from boot, and a post starts its agent well
        # within 300 s of booting, so a 0.0 sentinel silenced every camera fault of the first
        # five minutes of uptime (and failed the test on a freshly booted machine).
        self._last_camera_fault: float | None = None
        self.siren_tests: SirenTester | None = None
        self.started_mono = time.monotonic()
        self._siren_fault_reported = False
        self._rlog = RateLimitedLog(log, interval_s=10.0)  # repeating failures, one line/10 s

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.cfg
        set_node_id(cfg.node.node_id)
        self.loop = asyncio.get_running_loop()
        state = Path(cfg.storage.state_dir)
        try:
            state.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a full or broken disk must not silence the post
            log_event(log, "state_dir_unavailable", logging.ERROR, path=str(state),
                      error=str(exc))
        self.security = load_security_hooks(cfg, self.clock)
        # The siren comes up before the database: a broken disk must not silence the post.
        self.hw = build_hardware(cfg, simulate=self.simulate, on_siren_change=self._on_siren_change)
        self.outbox = await asyncio.to_thread(
            Outbox, state / "outbox.db", cfg.node.node_id, clock=self.clock,
            quota=StorageQuota.from_config(cfg.storage))
        self.snapshots = SnapshotStore(
            self.outbox, state / "snapshots",
            quota_bytes=int(cfg.storage.snapshot_quota_mb * 1024 * 1024),
            retention_seconds=cfg.storage.snapshot_retention_days * 86400,
            sealer=self.security.sealer)
        self.engine = AlarmEngine(cfg, self.hw.siren, self.outbox, loop=self.loop,
                                  on_recorded=self._on_recorded,
                                  request_snapshot=self._request_snapshot)
        self.siren_tests = build_tester(cfg.siren.self_test, self.hw.siren, self.hw.pin_factory,
                                        self.engine.record, self.hw.closers)
        for b in cfg.buttons:
            self.buttons[b.name] = ButtonWatcher(b, self.engine.on_button,
                                                 pin_factory=self.hw.pin_factory)
        self.engine.record(EventDraft(SystemEvent.BOOT.value, int(Priority.P4), {
            "version": __version__, "simulate": self.simulate,
            "quarantined": str(self.outbox.quarantined) if self.outbox.quarantined else None}))
        self.control = ControlServer(socket_path(state), control_handlers(self))
        await self.control.start()
        self._start_sync()
        self._spawn(self._maintenance(), "maintenance")
        if self.hw.modem is not None:
            from edge.drivers.modem_watchdog import ModemWatchdog

            watchdog = ModemWatchdog(self.hw.modem, cfg.modem, self._on_modem_fault)
            self._spawn(watchdog.run(), "modem-watchdog")
        self._spawn(self._systemd_watchdog(), "systemd-watchdog")
        if self.siren_tests is not None:
            self._spawn(self.siren_tests.run(), "siren-tests")
        log_event(log, "agent_started", version=__version__, simulate=self.simulate,
                  boot_id=self.outbox.boot_id, buttons=sorted(self.buttons))

    def _start_sync(self) -> None:
        if not self.cfg.sync.enabled:
            return
        from edge.sync.service import SyncService

        assert self.outbox is not None and self.engine is not None
        commands = NodeCommands(self.engine, self.buttons, take_snapshot=self.take_snapshot,
                                status=self.status)
        sms = None
        if self.hw is not None and self.hw.modem is not None:
            modem = self.hw.modem

            def sms(number: str, text: str) -> None:
                modem.send_sms(number, text)
        self.sync = SyncService(
            self.cfg, self.outbox, snapshots=self.snapshots, clock=self.clock,
            status_provider=self.siren_status, command_handler=commands, sms_sender=sms,
            sign_event=self.security.sign_event, sign_message=self.security.sign_message,
            verify_command=self.security.verify_command,
            security_event=self._on_security_event)
        # Supervised: a crash of the sync service is logged with its cause and the service is
        # started again with backoff; it is never left dead (edge.sync.health.supervise).
        from edge.sync.health import supervise

        sync = self.sync

        def crashed(exc: BaseException, delay: float) -> None:
            sync.health.restarts += 1
            sync.health.set("restarting", "crashed", f"{exc!r} (restart in {delay:.1f}s)")

        self._sync_task = asyncio.create_task(supervise("sync", sync.run, on_crash=crashed),
                                              name="sync")
        self._sync_task.add_done_callback(self._task_done)
        self._tasks.append(self._sync_task)

    def sync_alive(self) -> bool:
        """Watchdog check: the supervised sync task is running (sync disabled counts as alive).
        An unreachable broker or central is normal offline operation, not a failure here."""
        if not self.cfg.sync.enabled:
            return True
        task = self._sync_task
        return task is not None and not task.done()

    def health_problem(self) -> str | None:
        """One line for systemd's STATUS= when a part works but is degraded (e.g. sync failing)."""
        if self.sync is None:
            return None
        problem: str | None = self.sync.health.problem()
        return problem

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log_event(log, "task_failed", logging.ERROR, task=task.get_name(), error=repr(exc))

    async def stop(self) -> None:
        if self.hw is not None and self.hw.modem is not None:
            self.hw.modem.shutdown()  # a modem reset in a worker thread gives up promptly
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a stuck task must not keep the post from stopping (systemd restarts it).
            _done, stuck = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:
                log_event(log, "task_did_not_stop", logging.ERROR, task=task.get_name())
        with contextlib.suppress(Exception):
            await self.control.close()
        for w in self.buttons.values():
            w.close()
        if self.hw is not None:
            self.hw.close()
        if self.engine is not None and (kept := self.engine.flush_retries()):
            log_event(log, "kept_events_flushed", logging.WARNING, count=kept)
        if self.outbox is not None:
            await asyncio.to_thread(self.outbox.close)
        log_event(log, "agent_stopped")

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- callbacks ---------------------------------------------------------------------------

    def _on_recorded(self, ev: StoredEvent) -> None:
        if self.sync is not None:
            self.sync.wake()

    def _request_snapshot(self, ev: StoredEvent) -> None:
        if self.hw is None or self.hw.camera is None or self.cfg.camera.frames_per_alarm == 0:
            return
        self._spawn(self.take_snapshot(ev.event_id, ev.priority), f"snapshot-{ev.event_id[:8]}")

    async def take_snapshot(self, event_id: str | None, priority: int) -> int:
        """Capture a burst off the alarm path and store the frames; returns frames stored."""
        if self.hw is None or self.hw.camera is None or self.snapshots is None:
            return 0
        frames = await capture_burst(self.hw.camera, max(1, self.cfg.camera.frames_per_alarm),
                                     self.cfg.camera.frame_interval_ms / 1000)
        stored = 0
        for frame in frames:
            if isinstance(frame, Exception):
                self._camera_fault(str(frame), event_id)
                continue
            try:
                snap = await asyncio.to_thread(self.snapshots.add, frame, event_id=event_id,
                                               priority=priority)
            except KentonganError as exc:
                self._rlog.log("snapshot_store_failed", logging.ERROR, event_id=event_id,
                               error=str(exc))
                continue
            stored += 1
            log_event(log, "snapshot_stored", event_id=event_id, snapshot_id=snap.snapshot_id,
                      bytes=snap.size)
        return stored

    def _camera_fault(self, detail: str, event_id: str | None) -> None:
        self._rlog.log("camera_fault", logging.WARNING, event_id=event_id, error=detail)
        now = time.monotonic()
        last = self._last_camera_fault
        if (last is None or now - last > 300) and self.engine is not None:
            self._last_camera_fault = now
            self.engine.record(EventDraft(SystemEvent.CAMERA_FAULT.value, int(Priority.P3),
                                          {"error": detail[:200], "event_id": event_id}))

    def _on_modem_fault(self, kind: str, detail: str) -> None:
        log_event(log, "modem_fault", logging.WARNING, kind=kind, error=detail)
        if self.engine is not None:
            self.engine.record(EventDraft(SystemEvent.MODEM_FAULT.value, int(Priority.P3),
                                          {"kind": kind, "detail": detail[:200]}))

    def _on_security_event(self, kind: str, data: dict[str, Any]) -> None:
        log_event(log, "security_event", logging.WARNING, kind=kind, **{
            k: v for k, v in data.items() if k in ("command_id", "reason", "action")})
        if self.engine is not None:
            self.engine.record(EventDraft(SystemEvent.SECURITY.value, int(Priority.P2),
                                          {"kind": kind, **data}))

    def _on_siren_change(self, ev: Any) -> None:
        kind = getattr(ev, "kind", None) or getattr(ev, "reason", None)
        if kind in ("max_on", "max_on_time") and self.engine is not None:
            self.engine.record(EventDraft(SystemEvent.SIREN_MAX_ON.value, int(Priority.P3), {
                "activation_id": getattr(ev, "activation_id", None)}))

    # -- periodic work -----------------------------------------------------------------------

    async def _maintenance(self) -> None:
        assert self.outbox is not None and self.snapshots is not None
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            try:
                await asyncio.to_thread(self.outbox.enforce_quota)
                await asyncio.to_thread(self.snapshots.purge_expired)
                await asyncio.to_thread(self.outbox.prune_acked,
                                        self.cfg.storage.acked_retention_days * 86400)
            except KentonganError as exc:
                log_event(log, "maintenance_failed", logging.ERROR, error=str(exc))
            self._check_silent_buttons()
            self.check_siren()

    def check_siren(self) -> bool:
        """A siren player thread that has ended (it died on a relay error) is a SIREN_FAULT for
        central, reported once (the systemd watchdog restarts the agent). True when reported."""
        if self.hw is None or self.engine is None or self.hw.siren.alive() or self._siren_fault_reported:
            return False
        self._siren_fault_reported = True
        log_event(log, "siren_fault", logging.ERROR, reason="player thread ended")
        self.engine.record(EventDraft(SystemEvent.SIREN_FAULT.value, int(Priority.P2),
                                      {"reason": "siren player stopped", "detail": "relay driver failed"}))
        return True

    def _check_silent_buttons(self) -> None:
        now = time.monotonic()
        for name, w in self.buttons.items():
            silent_for = now - max(w.last_activity_mono, self.started_mono)
            if silent_for > w.cfg.silent_after_days * 86400 and self.engine is not None:
                self.engine.record(EventDraft(SystemEvent.BUTTON_SILENT.value, int(Priority.P3),
                                              {"button": name, "silent_days": silent_for / 86400}))
                w.last_activity_mono = now

    async def _systemd_watchdog(self) -> None:
        try:
            from edge.watchdog import HealthWatchdog
        except ImportError:
            return
        assert self.hw is not None and self.outbox is not None
        hw, outbox = self.hw, self.outbox
        await HealthWatchdog({
            "siren_thread": hw.siren.alive,
            "outbox_writer": outbox.writer_alive,
            "sync": self.sync_alive,
        }, degraded=self.health_problem).run()

    # -- status and control --------------------------------------------------------------------

    def siren_status(self) -> dict[str, Any]:
        if self.hw is None:
            return {}
        st = self.hw.siren.state()
        now = time.monotonic()
        trig, last = st.trigger, st.last_trigger
        return {
            "playing": st.playing,
            "relay_on": st.relay_on,
            "pattern": st.pattern,
            "trigger": None if trig is None else {"source": trig.source, "detail": trig.detail,
                                                  "incident_type": trig.incident_type},
            "last_trigger": None if last is None else {"source": last.source, "detail": last.detail,
                                                       "incident_type": last.incident_type},
            "history": [[round(now - t, 3), on] for t, on in list(st.history)[-20:]],
        }

    def status(self) -> dict[str, Any]:
        assert self.outbox is not None
        sync: dict[str, Any] = {"enabled": self.cfg.sync.enabled}
        if self.sync is not None:
            sync.update(self.sync.status())
            sync["running"] = self.sync_alive()
            sync["stats"] = dict(vars(self.sync.stats))
        wall, quality = self.clock.now()
        return {
            "node_id": self.cfg.node.node_id,
            "display_name": self.cfg.node.display_name,
            "boot_id": self.outbox.boot_id,
            "version": __version__,
            "simulate": self.simulate,
            "time": wall,
            "time_quality": quality,
            "siren": self.siren_status(),
            "siren_tests": ({k: r.payload() for k, r in self.siren_tests.last.items()}
                            if self.siren_tests is not None else {}),
            "open_incidents": self.engine.status() if self.engine else {},
            "outbox": self.outbox.counts(),
            "storage": self.storage_health(),
            "snapshots": self.snapshots.counts() if self.snapshots else {},
            "sync": sync,
        }

    def storage_health(self) -> dict[str, Any]:
        """``Outbox.storage_health()`` plus the events the alarm engine keeps for retry (for
        status and the heartbeat's extra fields)."""
        if self.outbox is None:
            return {"state": "unavailable", "reasons": ["outbox not started"]}
        health = self.outbox.storage_health()
        health["pending_retries"] = self.engine.pending_retries() if self.engine else 0
        if health["pending_retries"] and health["state"] == "ok":
            health["state"] = "degraded"
            health["reasons"].append("events kept in memory for retry")
        return health


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def run_agent(cfg: NodeConfig, *, simulate: bool) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await Agent(cfg, simulate=simulate).run(stop)


__all__ = ["Agent", "ButtonSignal", "run_agent"]
