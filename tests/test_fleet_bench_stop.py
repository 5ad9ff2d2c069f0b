"""bench/fleet.py stopped by SIGTERM (a CI timeout, ``kill``, a closed terminal's SIGHUP) leaves
nothing behind: its simulated posts, central, the broker and the PostgreSQL cluster run as its
children and outlive it unless it stops them (the simulated posts retry a dead broker for their
whole drain time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # ended meanwhile
        return ""


def processes_mentioning(text: str) -> list[int]:
    """PIDs (other than this one) whose command line contains ``text``."""
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and int(e.name) != os.getpid() and text in cmdline(int(e.name))]


def wait_for(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_sigterm_stops_every_child(tmp_path: Path) -> None:
    keep = tmp_path / "fleet-run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fleet.py"), "--posts", "20", "--rate", "10", "--duration", "600",
         "--procs", "1", "--no-web", "--no-echo", "--keep", str(keep)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # The measured phase has begun once the simulated post process runs (started after the
        # broker and central are up): its command line names its spec file in the kept directory.
        wait_for(lambda: [p for p in processes_mentioning(str(keep)) if "fleet_sim.py" in cmdline(p)],
                 240, "the simulated posts to start")
        children = processes_mentioning(str(keep))
        assert len(children) >= 3, children  # broker, central, simulated posts at least
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        assert code == 128 + signal.SIGTERM, proc.stderr.read() if proc.stderr else ""
        left = wait_for(lambda: not processes_mentioning(str(keep)) or None, 60, "every child to end")
        assert left is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_mentioning(str(keep)):
            os.kill(pid, signal.SIGKILL)
