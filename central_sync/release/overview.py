"""Read-only summary of the rollout state for the desk's post overview.

The desk (``central_sync.web``) calls :func:`read_overview` on each page view; it opens
``<release dir>/rollout.db`` read-only, never creates it, and answers ``None`` when there is no
release directory or no rollout yet, so the overview shows nothing extra.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from central_sync.release.rollout import FAILED_STATES, HEALTHY, RolloutStore

log = logging.getLogger("central.release.overview")
ROLLOUT_DB = "rollout.db"


@dataclass(frozen=True)
class PostUpdate:
    """One post's update state, as far as it is known to the rollout."""

    node_id: str
    ring: str
    running_version: str | None
    #: ``current`` (runs the rolled-out version), ``failed``, ``rolled_back``, ``trial``,
    #: ``downloading``, ``installing``, ``refused``, ``waiting`` (offered, no report yet) or
    #: ``not_offered`` (outside the targeted ring), ``unknown`` (never reported to the rollout).
    state: str
    report_version: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RolloutOverview:
    version: str
    ring: str
    halted: bool
    halted_reason: str | None
    failed: int
    posts_in_ring: int
    posts: dict[str, PostUpdate] = field(default_factory=dict)

    def post(self, node_id: str, running_version: str | None = None) -> PostUpdate:
        """The post's state; a post the rollout has never heard of is judged by ``running_version``
        (its heartbeat): current when it already runs the version, else ``unknown``."""
        known = self.posts.get(node_id)
        if known is not None:
            return known
        state = "current" if running_version == self.version else "unknown"
        return PostUpdate(node_id=node_id, ring="?", running_version=running_version,
                          state=state)


def _state(version: str, targeted: bool, running: str | None, rv: str | None,
           rs: str | None) -> str:
    if rv == version and rs in FAILED_STATES:
        return str(rs)
    if running == version or (rv == version and rs == HEALTHY):
        return "current"
    if rv == version and rs:
        return rs
    return "waiting" if targeted else "not_offered"


def read_overview(release_dir: Path | None) -> RolloutOverview | None:
    """The latest rollout and every known post's state, or ``None`` (no directory, no file,
    no rollout, or a file that cannot be read: logged, never raised to the page)."""
    if release_dir is None:
        return None
    path = Path(release_dir) / ROLLOUT_DB
    if not path.is_file():
        return None
    try:
        store = RolloutStore(path, read_only=True)
    except sqlite3.Error as exc:
        log.warning("rollout_unreadable path=%s error=%s", path, exc)
        return None
    try:
        latest = store.latest()
        if latest is None:
            return None
        failed, total = store.failures(latest.version, latest.ring)
        posts: dict[str, PostUpdate] = {}
        for n in store.nodes():
            targeted = store.in_ring(n["ring"], latest.ring)
            posts[n["node_id"]] = PostUpdate(
                node_id=n["node_id"], ring=n["ring"], running_version=n["running_version"],
                state=_state(latest.version, targeted, n["running_version"],
                             n["report_version"], n["report_state"]),
                report_version=n["report_version"], reason=n["report_reason"] or None)
        return RolloutOverview(version=latest.version, ring=latest.ring,
                               halted=latest.status == "halted",
                               halted_reason=latest.halted_reason, failed=failed,
                               posts_in_ring=total, posts=posts)
    except sqlite3.Error as exc:
        log.warning("rollout_unreadable path=%s error=%s", path, exc)
        return None
    finally:
        store.close()
