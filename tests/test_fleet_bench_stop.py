"""bench/fleet.py stopped by SIGTERM (a CI timeout, ``kill``, a closed terminal's SIGHUP) leaves
nothing behind: its simulated posts, central, the broker and the PostgreSQL cluster run as its
children and outlive it unless it stops them (the simulated posts retry a dead broker for their
whole drain time)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.waits import wait_for

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
                 timeout=240, what="the simulated posts to start")
        children = processes_mentioning(str(keep))
        assert len(children) >= 3, children  # broker, central, simulated posts at least
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
        assert code == 128 + signal.SIGTERM, proc.stderr.read() if proc.stderr else ""
        wait_for(lambda: not processes_mentioning(str(keep)), timeout=60, what="every child to end")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in processes_mentioning(str(keep)):
            os.kill(pid, signal.SIGKILL)
