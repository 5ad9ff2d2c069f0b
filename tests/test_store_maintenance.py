"""Store maintenance on both backends (SQLite files, a real PostgreSQL started by the tests):
event retention keeps the evidence of open and recently closed incidents, de-duplication keys go
with their events, the audit log is pruned, and on PostgreSQL month partitions exist ahead of time
(rows of next month and the month after land in their own partitions, not the default one)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from central_sync.maintenance_settings import MaintenanceSettings
from central_sync.store import Store, open_store
from central_sync.store.maintenance import DAY, StoreMaintenance
from central_sync.store.postgres_schema import month_start, next_month
from central_sync.web.testing import event

NOW = time.time()
OLD = NOW - 800 * DAY


def _incident(store: Store, incident_id: str, node: str, event_id: str, *, closed_days_ago: float | None) -> None:
    with store.desk().incident_tx() as tx:
        tx.insert_incident(incident_id, node, "PANIC", 1, OLD, OLD, "synced")
        tx.link_event(node, event_id, incident_id)
        if closed_days_ago is not None:
            closed = NOW - closed_days_ago * DAY
            tx.set_state(incident_id, "resolved", closed, closed)


def _maintain(store: Store, **kw: object) -> StoreMaintenance:
    return StoreMaintenance(store.desk().runner, MaintenanceSettings.model_validate(kw))


def test_retention_keeps_incident_evidence_and_prunes_audit(any_store: Store) -> None:
    store = any_store
    free, open_ev, closed_recent, closed_long = (event("pos-a", "PANIC") for _ in range(4))
    extra = [event("pos-b", "PATROL_CHECKIN") for _ in range(25)]
    store.insert_events([free, open_ev, closed_recent, closed_long, *extra], OLD)
    fresh = event("pos-a", "PANIC")
    store.insert_events([fresh], NOW - DAY)
    _incident(store, "inc-open", "pos-a", open_ev.event_id, closed_days_ago=None)
    _incident(store, "inc-recent", "pos-a", closed_recent.event_id, closed_days_ago=10)
    _incident(store, "inc-long", "pos-a", closed_long.event_id, closed_days_ago=400)
    audit = store.audit_tables()
    audit.append(NOW - 800 * DAY, "cli:root", "user_add", "old", "{}", "10.0.0.1")
    audit.append(NOW - DAY, "cli:root", "user_add", "new", "{}", None)

    report = _maintain(store, chunk_rows=10, chunk_pause_ms=0).run(NOW)

    assert report.events_deleted == 27          # free, closed_long and the 25 check-ins
    assert report.events_held == 2
    for kept in (open_ev, closed_recent, fresh):
        assert store.get_event(kept.event_id) is not None, kept.event_id
    for gone in (free, closed_long, extra[0], extra[-1]):
        assert store.get_event(gone.event_id) is None, gone.event_id
    assert store.count_events() == 3
    # The incidents themselves (the desk's history) stay.
    assert store.desk().incident("inc-long") is not None
    assert [r["target"] for r in audit.recent(10)] == ["new"]
    assert report.audit_rows_deleted == 1
    kinds = {r["kind"] for r in store.desk().retention_log(20)}
    assert {"audit_log"} <= kinds and kinds & {"events", "event_month"}
    # De-duplication keys went with the deleted events and stayed with the kept ones.
    new, dup = store.insert_events([free, open_ev], NOW)
    assert new == [free.event_id] and dup == [open_ev.event_id]
    # A second run finds nothing more to delete.
    again = _maintain(store).run(NOW)
    assert (again.events_deleted, again.keys_deleted, again.audit_rows_deleted) == (0, 0, 0)
    assert again.events_held == 2


def test_closing_an_incident_lets_its_evidence_expire_later(any_store: Store) -> None:
    store = any_store
    ev = event("pos-a", "PANIC")
    store.insert_events([ev], OLD)
    _incident(store, "inc-1", "pos-a", ev.event_id, closed_days_ago=None)
    assert _maintain(store).run(NOW).events_held == 1
    assert store.get_event(ev.event_id) is not None
    with store.desk().incident_tx() as tx:
        tx.set_state("inc-1", "false_alarm", NOW - 30 * DAY, NOW - 30 * DAY)
    assert _maintain(store, evidence_hold_days=60).run(NOW).events_deleted == 0
    report = _maintain(store, evidence_hold_days=7).run(NOW)
    assert report.events_deleted == 1 and store.get_event(ev.event_id) is None


def _partition_of(url: str, event_id: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT tableoid::regclass::text FROM events WHERE event_id = %s", (event_id,)).fetchone()
    assert row is not None
    return str(row[0])


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON "
                                           "c.oid = i.inhrelid WHERE i.inhparent = 'events'::regclass")}


def test_postgres_partitions_ahead_and_months_dropped(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        this = month_start(NOW)
        months = [this, next_month(this), next_month(next_month(this))]
        names = [f"events_{m:%Y_%m}" for m in months]
        report = _maintain(store, partitions_ahead=2).run(NOW)
        assert set(names) <= _tables(pg_url)
        assert {f"{m:%Y-%m}" for m in months[1:]} <= set(report.partitions_created)
        # Rows received next month and the month after land in their own partitions.
        for month, name in zip(months[1:], names[1:], strict=True):
            ev = event("pos-a", "PANIC")
            new, _ = store.insert_events([ev], month.timestamp() + 3600)
            assert new == [ev.event_id]
            assert _partition_of(pg_url, ev.event_id) == name
        # An old month with a held row: the month is dropped, the held row moves to DEFAULT.
        held, free = event("pos-a", "PANIC"), event("pos-a", "PANIC")
        store.insert_events([held, free], OLD)
        old_name = f"events_{month_start(OLD):%Y_%m}"
        assert old_name in _tables(pg_url)
        _incident(store, "inc-open", "pos-a", held.event_id, closed_days_ago=None)
        report = _maintain(store).run(NOW)
        assert report.months_dropped == [f"{month_start(OLD):%Y-%m}"]
        assert (report.events_deleted, report.events_held) == (1, 1)
        assert old_name not in _tables(pg_url)
        assert _partition_of(pg_url, held.event_id) == "events_default"
        assert report.keys_deleted == 1 and report.default_partition_rows == 1
        with psycopg.connect(pg_url) as conn:
            keys = {r[0] for r in conn.execute("SELECT event_id FROM event_keys")}
        assert held.event_id in keys and free.event_id not in keys
        # The month can be created again (e.g. by a copy of old data): the held row moves into it.
        created = StoreMaintenance(store.desk().runner, MaintenanceSettings())
        with store.desk().runner.tx() as tx:
            from central_sync.store.partitions import ensure_month
            assert ensure_month(tx, month_start(OLD))
        assert _partition_of(pg_url, held.event_id) == old_name
        assert created.run(NOW).events_held == 1
    finally:
        store.close()


def test_cli_store_maintain(tmp_path: Path) -> None:
    cfg = tmp_path / "central.toml"
    cfg.write_text('database = "central.db"\n[maintenance]\naudit_log_retention_days = 30\n')
    store = open_store(f"sqlite:///{tmp_path / 'central.db'}")
    store.insert_events([event("pos-a", "PANIC")], NOW - 3000 * DAY)
    store.close()
    proc = subprocess.run([sys.executable, "-m", "central_sync.cli", "store", "maintain", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok: 0 partitions created, 0 months dropped, 1 events deleted" in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('database = "central.db"\n[maintenance]\nevent_retention_days = 3\n')
    proc = subprocess.run([sys.executable, "-m", "central_sync.cli", "store", "maintain", "--config", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "maintenance.event_retention_days" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_month_helpers_roll_over_the_year() -> None:
    december = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert next_month(december) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


UNITS = Path(__file__).resolve().parent.parent / "systemd"


def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_maintenance_units() -> None:
    svc = _directives(UNITS / "kentongan-store-maintain.service")
    assert svc["Type"] == ["oneshot"]
    assert svc["ExecStart"][0].endswith("kentongan-central store maintain --config "
                                        "/etc/kentongan-central/central.toml")
    assert svc["User"] == ["kentongan-central"]
    for key, value in (("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"),
                       ("ProtectHome", "yes"), ("CapabilityBoundingSet", "")):
        assert svc[key] == [value], key
    timer = _directives(UNITS / "kentongan-store-maintain.timer")
    assert timer["Persistent"] == ["true"] and timer["OnCalendar"]
    assert timer["WantedBy"] == ["timers.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_maintenance_units_verify(tmp_path: Path) -> None:
    names = ["kentongan-store-maintain.service", "kentongan-store-maintain.timer"]
    for unit in names:
        lines = [("ExecStart=/bin/true " + ln.split(" ", 1)[1]) if ln.startswith("ExecStart=") else ln
                 for ln in (UNITS / unit).read_text().splitlines()]
        (tmp_path / unit).write_text("\n".join(lines) + "\n")
    proc = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / u) for u in names)],
                          capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if any(u in ln for u in names)]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def test_postgres_month_left_when_its_lock_is_not_free(pg_url: str) -> None:
    """A long reader holding the events table: the detach gives up after lock_timeout_s instead
    of queueing (which would stall every ingest insert behind it); the next run drops the month."""
    store = open_store(pg_url)
    try:
        ev = event("pos-a", "PANIC")
        store.insert_events([ev], OLD)
        label = f"{month_start(OLD):%Y-%m}"
        _maintain(store, partitions_ahead=1, event_retention_days=3000).run(NOW)  # this month and the next exist
        with psycopg.connect(pg_url) as reader:
            reader.execute("SELECT COUNT(*) FROM events").fetchone()  # ACCESS SHARE until the reader ends
            report = _maintain(store, lock_timeout_s=0.3, partitions_ahead=2).run(NOW)
            assert report.months_left == [label] and report.months_dropped == []
            # Creating the month after next needs the same lock: left for the next run too.
            assert report.partitions_left == [f"{next_month(next_month(month_start(NOW))):%Y-%m}"]
            assert store.get_event(ev.event_id) is not None
            # Ingest still commits meanwhile.
            assert store.insert_events([event("pos-a", "PANIC")], NOW)[0]
        report = _maintain(store, lock_timeout_s=0.3).run(NOW)
        assert report.months_dropped == [label] and store.get_event(ev.event_id) is None
        assert report.partitions_left == [] and len(report.partitions_created) == 1
    finally:
        store.close()
