"""``/metrics`` in the Prometheus text format (prometheus_client), computed when scraped.

Only what the web process can know cheaply: post states from the node table, open and
unacknowledged incidents, the age of the oldest unacknowledged one, the live stream's clients
and changes, and ingest's freshness from the newest stored event (how long ago it was stored,
and how long it took from the post's clock to central). One collector per app, its own registry
(no process-global state, so several apps in one test process do not collide).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from central_sync.web.context import WebContext
from central_sync.web.desk import as_dict
from central_sync.web.metrics_supervision import SupervisionCollector

POST_STATES = ("online", "offline", "unknown")


class DeskCollector(Collector):
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        now = time.time()
        posts = GaugeMetricFamily("kentongan_posts", "Posts known to central by state.",
                                  labels=["state"])
        counts = dict.fromkeys(POST_STATES, 0)
        for n in ctx.desk.nodes().values():
            state = str(n.get("status") or ("online" if n.get("online") else "offline"))
            counts[state if state in counts else "unknown"] += 1
        for state, count in counts.items():
            posts.add_metric([state], count)
        yield posts

        open_g = GaugeMetricFamily("kentongan_incidents_open", "Open incidents by priority.",
                                   labels=["priority"])
        unack = GaugeMetricFamily("kentongan_incidents_unacknowledged",
                                  "Incidents not yet acknowledged, by priority.",
                                  labels=["priority"])
        oldest = GaugeMetricFamily("kentongan_incident_oldest_unacknowledged_seconds",
                                   "Age of the oldest unacknowledged incident (0: none).",
                                   labels=["priority"])
        by_open = dict.fromkeys(range(1, 5), 0)
        by_new = dict.fromkeys(range(1, 5), 0)
        age = dict.fromkeys(range(1, 5), 0.0)
        for inc in ctx.desk.book.incidents(open_only=True, limit=100_000):
            p = inc.priority if inc.priority in by_open else 4
            by_open[p] += 1
            if inc.state.value == "new":
                by_new[p] += 1
                age[p] = max(age[p], now - float(inc.opened_at))
        for p in by_open:
            open_g.add_metric([str(p)], by_open[p])
            unack.add_metric([str(p)], by_new[p])
            oldest.add_metric([str(p)], age[p])
        yield open_g
        yield unack
        yield oldest

        yield GaugeMetricFamily("kentongan_stream_clients", "Browsers on the live stream.",
                                value=ctx.hub.subscribers)
        yield CounterMetricFamily("kentongan_stream_changes", "Incident changes published to "
                                  "the live stream by this process.", value=ctx.hub.published)

        latest = self._latest_event()
        stored = GaugeMetricFamily("kentongan_ingest_last_event_age_seconds",
                                   "Seconds since central stored its newest event "
                                   "(NaN: no event yet).")
        lag = GaugeMetricFamily("kentongan_ingest_lag_seconds",
                                "Post clock to central store of the newest event "
                                "(NaN: none, or the post's clock was not synchronised).")
        received = float(latest.get("received_at") or 0) if latest else 0.0
        wall = float(latest.get("wall_time") or 0) if latest else 0.0
        stored.add_metric([], now - received if received else float("nan"))
        synced = latest is not None and latest.get("time_quality") == "synced"
        lag.add_metric([], max(0.0, received - wall) if received and wall and synced
                       else float("nan"))
        yield stored
        yield lag

        rejections = CounterMetricFamily("kentongan_ingest_rejections",
                                         "Messages rejected by ingest, by reason.",
                                         labels=["reason"])
        for reason, count in sorted(ctx.store.rejection_counts().items()):
            rejections.add_metric([str(reason)], int(count))
        yield rejections

    def _latest_event(self) -> dict[str, Any] | None:
        rows = self.ctx.store.latest_events(limit=1)
        return as_dict(rows[-1]) if rows else None


def registry_for(ctx: WebContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DeskCollector(ctx))
    registry.register(SupervisionCollector(ctx.desk))
    return registry
