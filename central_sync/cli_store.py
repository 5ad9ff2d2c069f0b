"""``kentongan-central store maintain`` and ``kentongan-central store copy`` (registered by cli.py).

``maintain``: partitions ahead, event and audit-log retention (central_sync.store.maintenance;
run by systemd/kentongan-store-maintain.timer). ``copy``: an SQLite store into PostgreSQL
(central_sync.store_copy). Both print one progress line per step and answer errors with one
``error: ...`` line (``cli_support.cli_command``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from central_sync.cli_support import cli_command
from central_sync.config import load_central_config
from central_sync.errors import CentralConfigError
from central_sync.store import open_store, redact_url
from central_sync.store.copy import StoreCopy
from central_sync.store.factory import is_postgres_url, sqlite_path
from central_sync.store.maintenance import StoreMaintenance
from edge.logs import setup_logging

log = logging.getLogger("central_sync.cli_store")


def register(sub: Any) -> None:
    p = sub.add_parser("store", help="store maintenance and migration to PostgreSQL")
    ssub = p.add_subparsers(dest="store_command", metavar="ACTION")
    ssub.required = True
    m = ssub.add_parser("maintain", help="create month partitions ahead, delete events and audit-log "
                        "rows past their retention ([maintenance] of the config)")
    m.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    m.set_defaults(func=cli_command(cmd_maintain))
    c = ssub.add_parser("copy", help="copy an SQLite store into a PostgreSQL database (resumable)")
    c.add_argument("--config", type=Path, help="central config file (TOML); its SQLite store is the source")
    c.add_argument("--from", dest="source", help="source store URL sqlite:///... (instead of --config)")
    c.add_argument("--to", required=True, help="target store URL postgresql://user@host:port/db")
    c.add_argument("--merge", action="store_true",
                   help="copy into a target that already holds other data (new row ids; counts must grow)")
    c.add_argument("--chunk", type=int, default=2000, help="rows per transaction (default 2000)")
    c.set_defaults(func=cli_command(cmd_copy))


def _say(line: str) -> None:
    print(line, flush=True)


def cmd_maintain(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.config)
    setup_logging(cfg.log_level)
    store = open_store(cfg.store_url)
    try:
        _say(f"store {redact_url(cfg.store_url)}")
        report = StoreMaintenance(store.desk().runner, cfg.maintenance, progress=_say).run()
    finally:
        store.close()
    _say(f"ok: {len(report.partitions_created)} partitions created, {len(report.months_dropped)} months "
         f"dropped, {report.events_deleted} events deleted ({report.events_held} kept for incidents), "
         f"{report.keys_deleted} event keys deleted, {report.audit_rows_deleted} audit-log rows deleted"
         + (f"; left for the next run (lock busy): {', '.join(report.partitions_left + report.months_left)}"
            if report.months_left or report.partitions_left else ""))
    return 0


def cmd_copy(args: argparse.Namespace) -> int:
    source = _copy_source(args)
    if not is_postgres_url(args.to):
        raise CentralConfigError("the target must be a postgresql:// URL", "--to")
    target = redact_url(args.to)
    _say(f"copying {source} -> {target}")
    open_store(args.to).close()  # the target's schema (migrations), before anything is copied
    copy = StoreCopy(source, args.to, merge=args.merge, chunk=args.chunk, progress=_say)
    try:
        report = copy.run()
    finally:
        copy.close()
    for table, why in report.not_copied:
        _say(f"not copied: {table} ({why})")
    _say(f"{'table':<20} {'source':>10} {'target':>10}")
    for t in report.tables:
        mark = "ok" if t.ok(report.merge) else "MISMATCH"
        if t.refused:
            mark += f" ({len(t.refused)} refused)"
        _say(f"{t.table:<20} {t.source:>10} {t.target:>10}  {mark}")
    refused = [line for t in report.tables for line in t.refused]
    for line in refused[:20]:
        _say(f"refused by PostgreSQL: {line}")
    if not report.ok:
        print(f"error: source and target differ ({len(refused)} rows refused by PostgreSQL; see the "
              "table above)",
              file=sys.stderr)
        return 1
    _say(f"ok: {sum(t.copied for t in report.tables)} rows copied now; counts verified"
         + (" (merged: the target holds at least the source's rows)" if report.merge else ""))
    return 0


def _copy_source(args: argparse.Namespace) -> Path:
    if (args.source is None) == (args.config is None):
        raise CentralConfigError("give the source as --config (its SQLite store) or --from (one)", "--from")
    if args.source is not None:
        path = sqlite_path(args.source)
        if path is None:
            raise CentralConfigError("the source must be a sqlite:/// URL", "--from")
        return path
    cfg = load_central_config(args.config)
    if cfg.sqlite_file is None:
        raise CentralConfigError("this config's store is not SQLite; give --from sqlite:///...", "--config")
    return cfg.sqlite_file
