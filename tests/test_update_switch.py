"""Unit checks of the power-cut repair on hand-made half states (the kill trials cover the
random ones): every repair leaves current and good on complete releases."""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge.update.switch import COMPLETE, Layout, UpdateState, recover


def _release(layout: Layout, version: str, complete: bool = True) -> None:
    d = layout.release(version)
    (d / "bin").mkdir(parents=True)
    if complete:
        layout.mark_complete(version)


def test_half_states_are_repaired(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    lay.ensure()
    _release(lay, "1.0.0")
    _release(lay, "1.1.0", complete=False)  # cut mid-install
    lay.set_link(lay.good, "1.0.0")
    os.symlink("releases/1.1.0", lay.current)  # a current that points at an incomplete venv
    os.symlink("releases/1.1.0", tmp_path / f".current.tmp-{os.getpid() + 1}")
    lay.save_state(UpdateState(phase="installing", target="1.1.0", previous="1.0.0"))
    actions = recover(lay)
    assert lay.link_target(lay.current) == lay.link_target(lay.good) == "1.0.0"
    assert not (lay.releases / "1.1.0").exists()
    assert not list(tmp_path.glob(".current.tmp-*"))
    assert lay.load_state().phase == "idle"
    assert any("removed incomplete 1.1.0" in a for a in actions)
    assert recover(lay) == []  # idempotent: nothing left to repair


def test_rollback_cut_short_finishes_and_will_be_reported(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    lay.ensure()
    _release(lay, "1.0.0")
    _release(lay, "1.1.0")
    lay.set_link(lay.good, "1.0.0")
    lay.set_link(lay.current, "1.1.0")
    lay.save_state(UpdateState(phase="rolling_back", target="1.1.0", previous="1.0.0",
                               failed={"1.1.0": "self-check failed: siren"}))
    recover(lay)
    st = lay.load_state()
    assert lay.link_target(lay.current) == "1.0.0" and st.phase == "idle"
    assert st.last_result["reported"] is False and st.last_result["state"] == "rolled_back"
    assert "siren" in st.last_result["reason"]


def test_trial_continues_and_unreadable_state_resets(tmp_path: Path) -> None:
    lay = Layout(tmp_path)
    lay.ensure()
    _release(lay, "1.0.0")
    _release(lay, "1.1.0")
    lay.set_link(lay.good, "1.0.0")
    lay.set_link(lay.current, "1.1.0")
    lay.save_state(UpdateState(phase="trial", target="1.1.0", previous="1.0.0",
                               trial_started=1.0))
    recover(lay)
    st = lay.load_state()
    assert st.phase == "trial" and st.trial_started and st.trial_started > 1.0  # window restarts
    lay.state_file.write_text("{not json")
    recover(lay)
    assert lay.link_target(lay.current) == "1.1.0"  # complete: left alone, but unproven:
    st = UpdateState(**json.loads(lay.state_file.read_text()))
    assert (st.phase, st.target, st.previous) == ("trial", "1.1.0", "1.0.0")
    assert (lay.releases / "1.0.0" / COMPLETE).exists()


def test_update_config_names_the_bad_key_and_resolves_paths(tmp_path: Path) -> None:
    import pytest

    from edge.errors import ConfigError
    from edge.update.updater import load_update_config

    cfg = tmp_path / "update.toml"
    cfg.write_text('server_url = "https://c:8443"\nroot = "opt"\nrate_bytes_per_sec = 1\n')
    with pytest.raises(ConfigError) as exc:
        load_update_config(cfg)
    assert exc.value.key_path == "rate_bytes_per_sec"
    cfg.write_text('server_url = "https://c:8443"\nroot = "opt"\n')
    loaded = load_update_config(cfg)
    assert loaded.root == tmp_path / "opt" and loaded.health_window_seconds == 300


def test_token_bucket_paces_reads_to_the_configured_rate() -> None:
    from edge.update.fetch import CHUNK, TokenBucket

    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(32 * 1024, clock=lambda: now[0], sleep=sleep)
    for _ in range(64):  # 1 MiB in CHUNK reads
        bucket.consume(CHUNK)
    # 1 MiB at 32 KiB/s with a one-second burst: 31 s of waiting, not less
    assert abs(now[0] - (64 * CHUNK - 32 * 1024) / (32 * 1024)) < 0.01
    waits = len(slept)
    TokenBucket(0, clock=lambda: now[0], sleep=sleep).consume(10**9)  # 0 = unlimited
    assert len(slept) == waits
