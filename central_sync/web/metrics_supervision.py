"""Supervision's figures in ``/metrics``: whether central is blind, its live ingest links and the
posts with an open outage (cheap: the last sweep's state and one indexed count)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from central_sync.web.desk import Desk


class SupervisionCollector(Collector):
    def __init__(self, desk: Desk) -> None:
        self.desk = desk

    def collect(self) -> Iterator[Metric]:
        link = self.desk.supervisor.link
        yield GaugeMetricFamily("kentongan_central_blind", "1 while central cannot see the broker (no "
                                "ingest process connected, or silence from every post); post states "
                                "are then unknown.", value=1 if link.blind else 0)
        yield GaugeMetricFamily("kentongan_central_ingest_links", "Ingest processes whose link beat "
                                "is fresh.", value=link.processes)
        yield GaugeMetricFamily("kentongan_post_outages_open", "Posts with an open outage (offline, "
                                "not back yet).", value=len(self.desk.supervisor.tables.open_outages()))
