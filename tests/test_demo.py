"""`scripts/demo`'s main job, run once: broker, central and three enrolled simulated posts through
a network cut; the backlog must arrive exactly once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_scenario_runs_and_backlog_arrives_exactly_once(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "edge.demo", "--once", "--state",
                          str(tmp_path / "demo")], capture_output=True, text=True, timeout=300)
    out = res.stdout
    assert res.returncode == 0, out[-3000:] + res.stderr[-3000:]
    rows = re.findall(r"acked at post=(\d+)\s+stored at central=(\d+)\s+(OK|MISMATCH)", out)
    assert len(rows) == 3, out[-3000:]
    assert all(status == "OK" and int(a) == int(c) and int(a) > 0 for a, c, status in rows), rows
    assert "duplicates at central: 0" in out
    assert "SMS fallback sent" in out
    # Supervision: the cut shows the blind banner; a post losing power is offline on the desk
    # with a POST_OFFLINE incident.
    assert "desk: banner 'central cannot see the posts'" in out, out[-3000:]
    shown = re.search(r"desk: smg-tembalang-rw06-rt01 shown offline after ([\d.]+) s", out)
    assert shown and float(shown.group(1)) <= 60, out[-3000:]
    assert re.search(r"desk: POST_OFFLINE incident inc-offline-\w+ opened after", out), out[-3000:]
    assert re.search(r"http://127\.0\.0\.1:\d+/\s+login: operator", out)
