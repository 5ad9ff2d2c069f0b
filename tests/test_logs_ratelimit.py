"""RateLimitedLog: one line per key per interval, the dropped ones counted in the next line."""

from __future__ import annotations

import logging

import pytest

from edge.logs import RateLimitedLog


def test_one_line_per_interval_with_summary_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    rl = RateLimitedLog(logging.getLogger("t.rl"), interval_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t.rl"):
        assert rl.log("disk_full", logging.WARNING, pending=1)
        assert not any(rl.log("disk_full", logging.WARNING, pending=i) for i in range(500))
        assert rl.log("other_kind", logging.WARNING)  # keys are independent
        now[0] += 10.0
        assert rl.log("disk_full", logging.WARNING, pending=2)
        assert not rl.log("disk_full", logging.WARNING, pending=3)
        assert rl.flush() == 1
    lines = [(r.getMessage(), getattr(r, "suppressed", None)) for r in caplog.records]
    assert lines == [("disk_full", None), ("other_kind", None), ("disk_full", 500),
                     ("disk_full", 1)]
    assert rl.suppressed_total == 501 and rl.written == 4
