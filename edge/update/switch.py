"""The post's release layout, its state file and the power-cut-safe switch.

Layout under the update root (default ``/opt/kentongan``)::

    releases/<version>/          one virtualenv per version; complete once it holds
    releases/<version>/.kentongan-complete   (written last, fsynced)
    current -> releases/<v>      what kentongan-edge.service runs (ExecStart through it)
    good    -> releases/<v>      the last version that passed its health check; the updater and
                                 the boot-time recover step run from here, so a bad release can
                                 never break its own rollback
    wheels/                      verified wheels, by file name (downloads resume from *.part)
    update-state.json            the updater's state, replaced atomically (write, fsync, rename,
                                 fsync the directory)

Invariant: ``current`` and ``good`` only ever point at complete releases, and every link change
is one ``rename(2)`` of a freshly made link over the old one. A power cut at any instant leaves
the old link or the new one, both runnable. ``recover()`` (at boot, before the agent) repairs
everything else: stray temporary links, half-built release directories, a trial cut short.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge.update import UpdateError
from edge.update.manifest import parse_version

COMPLETE = ".kentongan-complete"
STATE_FILE = "update-state.json"
PHASES = ("idle", "installing", "trial", "rolling_back")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@dataclass
class UpdateState:
    """``phase``: idle | installing (target being built) | trial (current = target, health check
    running; ``previous`` = good) | rolling_back (current is being pointed back at previous)."""

    phase: str = "idle"
    target: str | None = None
    previous: str | None = None
    trial_started: float | None = None
    attempts: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # version -> reason, never retried
    last_result: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: bytes) -> UpdateState:
        raw = json.loads(data)
        st = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
        if st.phase not in PHASES:
            raise ValueError(f"unknown phase {st.phase!r}")
        return st


class Layout:
    """Paths and link operations under one update root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.wheels = self.root / "wheels"
        self.current = self.root / "current"
        self.good = self.root / "good"
        self.state_file = self.root / STATE_FILE

    def ensure(self) -> None:
        for d in (self.root, self.releases, self.wheels):
            d.mkdir(parents=True, exist_ok=True)

    def release(self, version: str) -> Path:
        parse_version(version)
        return self.releases / version

    def is_complete(self, version: str | None) -> bool:
        return bool(version) and (self.releases / str(version) / COMPLETE).is_file()

    def mark_complete(self, version: str) -> None:
        d = self.release(version)
        atomic_write(d / COMPLETE, json.dumps({"version": version,
                                               "completed_at": time.time()}).encode())

    def link_target(self, link: Path) -> str | None:
        """The version a link points at (None if missing or not into releases/)."""
        try:
            dest = os.readlink(link)
        except OSError:
            return None
        p = Path(dest)
        return p.name if p.parent.name == "releases" else None

    def set_link(self, link: Path, version: str) -> None:
        """Point ``link`` at releases/<version> with one atomic rename."""
        if not self.is_complete(version):
            raise UpdateError("install_failed", f"release {version} is not complete")
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(os.path.join("releases", version), tmp)
        os.replace(tmp, link)
        fsync_dir(link.parent)

    # -- state --------------------------------------------------------------------------------

    def load_state(self) -> UpdateState:
        try:
            return UpdateState.from_json(self.state_file.read_bytes())
        except FileNotFoundError:
            return UpdateState()
        except (ValueError, TypeError, OSError):
            return UpdateState(last_result={"recovered": "state file unreadable, reset"})

    def save_state(self, st: UpdateState) -> None:
        atomic_write(self.state_file, json.dumps(asdict(st), indent=1, sort_keys=True).encode())

    def complete_versions(self) -> list[str]:
        out = []
        if self.releases.is_dir():
            for d in self.releases.iterdir():
                try:
                    parse_version(d.name)
                except UpdateError:
                    continue
                if (d / COMPLETE).is_file():
                    out.append(d.name)
        return sorted(out, key=parse_version)

    def prune(self, keep: set[str]) -> list[str]:
        """Delete releases not in ``keep`` (never current or good)."""
        keep = keep | {v for v in (self.link_target(self.current),
                                   self.link_target(self.good)) if v}
        removed = []
        if self.releases.is_dir():
            for d in self.releases.iterdir():
                if d.name not in keep:
                    remove_tree(d)
                    removed.append(d.name)
        return removed


def remove_tree(path: Path) -> None:
    """Delete a release directory: first its marker (so a cut mid-delete leaves it incomplete,
    never a half-deleted 'complete' venv), then the rest."""
    with contextlib.suppress(FileNotFoundError):
        (path / COMPLETE).unlink()
        fsync_dir(path)
    shutil.rmtree(path, ignore_errors=True)


def recover(layout: Layout) -> list[str]:
    """Repair any half state after a power cut or a killed updater; returns what it did.

    Idempotent and safe to run at every boot before the agent starts."""
    actions: list[str] = []
    layout.ensure()
    for p in layout.root.iterdir():  # temporary links and state files of a killed writer
        if p.name.startswith((".current.tmp-", ".good.tmp-", f".{STATE_FILE}.tmp-")):
            p.unlink(missing_ok=True)
            actions.append(f"removed {p.name}")
    st = layout.load_state()
    if "recovered" in st.last_result:
        actions.append(st.last_result["recovered"])
    complete = layout.complete_versions()
    cur, good = layout.link_target(layout.current), layout.link_target(layout.good)
    if not layout.is_complete(good):
        # No proven version: the newest complete one that is not a failed trial.
        cand = cur if layout.is_complete(cur) and st.phase != "trial" else None
        if cand is None:
            ok = [v for v in complete if v not in st.failed and v != st.target]
            cand = ok[-1] if ok else (complete[-1] if complete else None)
        if cand is not None:
            layout.set_link(layout.good, cand)
            actions.append(f"good -> {cand}")
            good = cand
    if (st.phase == "rolling_back" or not layout.is_complete(cur)) and good is not None:
        layout.set_link(layout.current, good)
        actions.append(f"current -> {good}")
        cur = good
    if st.phase == "rolling_back":
        if st.target:  # central has not heard it yet: the next pass sends the report
            st.last_result = {"version": st.target, "state": "rolled_back",
                              "reason": st.failed.get(st.target, "rollback cut short"),
                              "at": time.time(), "reported": False}
        st.phase, st.target, st.trial_started = "idle", None, None
        actions.append("rollback finished")
    elif st.phase == "installing":
        st.phase, st.target = "idle", None
        actions.append("interrupted install abandoned (downloads resume)")
    elif st.phase == "trial" and cur != st.target:
        st.phase, st.target, st.trial_started = "idle", None, None
        actions.append("trial abandoned before the switch")
    elif st.phase == "trial":
        st.trial_started = time.time()  # the window restarts with the agent
        actions.append(f"trial of {cur} continues")
    if st.phase == "idle" and cur is not None and good is not None and cur != good:
        # current runs an unproven version and no record says why (state lost): prove it.
        st.phase, st.target, st.previous, st.trial_started = "trial", cur, good, time.time()
        actions.append(f"current {cur} differs from good {good}: trial of {cur}")
    # Half-built releases: never referenced by a link, rebuilt from the verified wheels.
    if layout.releases.is_dir():
        for d in layout.releases.iterdir():
            if not (d / COMPLETE).is_file() and d.name not in (cur, good):
                remove_tree(d)
                actions.append(f"removed incomplete {d.name}")
    for part in layout.wheels.glob(".*.tmp-*"):
        part.unlink(missing_ok=True)
    layout.save_state(st)
    return actions
