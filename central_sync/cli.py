"""``kentongan-central``: central's command line (the only place with user-facing wording).

Subcommands here: ``run`` (all-in-one), ``ingest`` (one worker of a shared-subscription group;
``--lane bulk`` without the P1 lane, ``--lane p1`` the P1 lane alone: ``central_sync.ingest_p1``),
``web`` (the dashboard alone; see central_sync.processes and docs/scale.md), ``events``,
``nodes``, ``validate-config``. Other modules extend the
parser: each module named in ``EXTENSIONS`` that exists must expose
``register(subparsers: argparse._SubParsersAction) -> None`` and set ``func`` (taking the parsed
``argparse.Namespace`` and returning an exit code) on the subparsers it adds. A missing extension
module is skipped.

Web hook for ``run``: if ``central_sync.web.app`` is importable and exposes
``async def serve(cfg, store, ingest) -> None``, and the config has a ``web`` section that is
enabled (``cfg.web`` present, and its ``enabled`` is not False), ``run`` serves it beside ingest.
When either task ends with an error, the other is cancelled and the process exits non-zero.

Errors print ``error: <key path>: <reason>`` to stderr and exit 2 (config, usage) or 1 (runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from central_sync.config import CentralConfig, load_central_config
from central_sync.errors import CentralConfigError, CentralError
from central_sync.ingest import IngestService
from central_sync.ingest_p1 import P1Process
from central_sync.processes import DEFAULT_SHARED_GROUP, CommandPublisher
from central_sync.registry import registry_status
from central_sync.store import Store, open_store, redact_url
from central_sync.store.supervision_tables import SupervisionTables
from central_sync.supervision import link_state, post_status
from central_sync.web_settings import WebSettings
from edge import __version__
from edge.logs import log_event, set_node_id, setup_logging

EXTENSIONS = ("central_sync.cli_pki", "central_sync.cli_web", "central_sync.release.cli_release",
              "central_sync.cli_store")
WEB_APP_MODULE = "central_sync.web.app"

log = logging.getLogger("central_sync.cli")

Handler = Callable[[argparse.Namespace], int]

#: ``ingest --lane``: what one ingest process consumes (docs/scale.md, "P1 process").
LANES = ("all", "bulk", "p1")


def _load_extension(name: str) -> Any | None:
    """Import an extension module; None when exactly that module (or its package) is missing."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kentongan-central", description="Kentongan central service.")
    parser.add_argument("--version", action="version", version=f"kentongan-central {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="ingest uplink messages (and serve the web app when configured)")
    p.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ingest", help="one ingest worker of a scaled-out central (shared subscription)")
    p.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    p.add_argument("--worker-id", required=True, type=_worker_id,
                   help="this worker's fixed id (client id '<broker.client_id>-<ID>'; systemd: %%i)")
    p.add_argument("--lane", choices=LANES, default="all",
                   help="'all': bulk ingest with the P1 lane in-process; 'bulk': without the P1 lane "
                        "(a separate 'p1' process consumes it); 'p1': the P1 lane alone")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("web", help="the command-centre web app alone (reads the database)")
    p.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    p.set_defaults(func=cmd_web)

    p = sub.add_parser("events", help="list stored events, oldest first")
    p.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--node", help="only this node id")
    p.add_argument("--limit", type=int, default=20, help="show the last N events (default 20)")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("nodes", help="list nodes: online state, last seen, reported backlog")
    p.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_nodes)

    p = sub.add_parser("validate-config", help="check a central config file")
    p.add_argument("path", type=Path, help="central config file (TOML)")
    p.set_defaults(func=cmd_validate_config)

    for name in EXTENSIONS:
        module = _load_extension(name)
        if module is not None:
            module.register(sub)
    return parser


def _worker_id(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", text):
        raise argparse.ArgumentTypeError("1-32 letters, digits, '.', '_' or '-'")
    return text


def _err(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


#: Why central counts itself blind (``supervision.LinkState.reason``), for ``nodes``.
BLIND_REASONS = {"no_ingest": "no ingest process is connected to the broker",
                 "quiet": "the ingest processes heard no post for a while"}


def _open(path: Path) -> tuple[CentralConfig, Store]:
    cfg = load_central_config(path)
    return cfg, open_store(cfg.store_url)


# -- subcommands ---------------------------------------------------------------------------------
def cmd_validate_config(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.path)
    print(f"ok: {args.path} (store {redact_url(cfg.store_url)}, broker {cfg.broker.host}:{cfg.broker.port})")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise CentralConfigError("must be at least 1", "--limit")
    _cfg, store = _open(args.config)
    try:
        rows = store.latest_events(node_id=args.node, limit=args.limit)
    finally:
        store.close()
    for r in rows:
        if args.json:
            print(json.dumps(r, ensure_ascii=False, default=str))
        else:
            print(f"{r['rowid']:>8}  {_fmt_time(r['wall_time'])}  {r['node_id']:<20} {r['type']:<16} "
                  f"P{r['priority']}  {r['event_id']}")
    if not args.json and not rows:
        print("no events")
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    cfg, store = _open(args.config)
    try:
        now = time.time()
        rows = store.list_nodes(now=now)
        enrolment = registry_status(store.registry_tables())
        # The desk's rule (``[web.supervision]``: offline_after_s, central's own sight), not a
        # separate staleness rule: the command line and the desk must agree on every post.
        settings = WebSettings.from_config(cfg).supervision
        link = link_state(SupervisionTables(store.desk()).links(), now, settings, posts_known=len(rows))
        for r in rows:
            r["status"] = post_status(r, now, link, settings.offline_after_s)
    finally:
        store.close()
    if link.blind and not args.json:
        print(f"note: central cannot see the posts now ({BLIND_REASONS.get(link.reason, link.reason)}); "
              "their states read unknown")
    seen = {r["node_id"] for r in rows}
    # Enrolled nodes that never connected are listed too.
    rows += [{"node_id": n, "status": "unknown", "last_seen": None, "backlog": None,
              "display_name": None} for n in sorted(set(enrolment) - seen)]
    for r in rows:
        r["enrolment"] = enrolment.get(r["node_id"], "not enrolled")
        if args.json:
            print(json.dumps(r, ensure_ascii=False, default=str))
        else:
            backlog = "-" if r["backlog"] is None else str(r["backlog"])
            print(f"{r['node_id']:<24} {r['status']:<8} {r['enrolment']:<12} last seen "
                  f"{_fmt_time(r['last_seen'])}  backlog {backlog:<6} "
                  f"{r.get('display_name') or ''}".rstrip())
    if not args.json and not rows:
        print("no nodes")
    return 0


def web_enabled(cfg: CentralConfig) -> bool:
    section = getattr(cfg, "web", None)
    if section is None:
        return False
    enabled = section.get("enabled", True) if isinstance(section, dict) else getattr(section, "enabled", True)
    return bool(enabled)


def _web_serve(cfg: CentralConfig) -> Callable[..., Coroutine[Any, Any, None]] | None:
    if not web_enabled(cfg):
        return None
    module = _load_extension(WEB_APP_MODULE)
    serve = getattr(module, "serve", None) if module is not None else None
    return serve if callable(serve) else None


async def _systemd_watchdog() -> None:
    """READY=1 and watchdog pings for the Type=notify unit (no-op outside systemd). The loop
    being able to run this task is the health signal; a lost broker is retried, not fatal."""
    from central_sync.systemd_notify import run_watchdog

    await run_watchdog()


async def _serve(tasks: list[asyncio.Task[Any]]) -> None:
    """Run until cancelled or until one task ends (its error, or ``CentralError``)."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # raises the task's error
        raise CentralError(f"{next(iter(done)).get_name()} stopped unexpectedly")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def serve_central(cfg: CentralConfig, store: Store, *, worker_id: str | None = None,
                        with_web: bool = True, lane: str = "all") -> None:
    """Run ingest (and the web app hook) until cancelled or until one of them fails. With
    ``worker_id`` this is one worker of a shared-subscription group (``kentongan-central ingest``);
    ``lane`` is one of ``LANES``."""
    from central_sync.security_wiring import central_hooks

    hooks = central_hooks(cfg)
    client_id = None if worker_id is None else f"{cfg.broker.client_id}-{worker_id}"
    group = None if worker_id is None else (cfg.ingest.shared_group or DEFAULT_SHARED_GROUP)
    if lane == "p1":
        p1 = P1Process(cfg, store, verify_event=hooks.verify_event, client_id=client_id or cfg.broker.client_id,
                       shared_group=group)
        await _serve([asyncio.create_task(p1.run(), name="ingest-p1"),
                      asyncio.create_task(_systemd_watchdog(), name="systemd-watchdog")])
        return
    if lane == "bulk":
        cfg = cfg.model_copy(update={"ingest": cfg.ingest.model_copy(update={"p1_lane": False})})
    ingest = IngestService(cfg, store, verify_event=hooks.verify_event, sign_command=hooks.sign_command,
                           authenticate=hooks.authenticate, client_id=client_id, shared_group=group)
    tasks = [asyncio.create_task(ingest.run(), name="ingest"),
             asyncio.create_task(_systemd_watchdog(), name="systemd-watchdog")]
    serve = _web_serve(cfg) if with_web else None
    if serve is not None:
        tasks.append(asyncio.create_task(serve(cfg, store, ingest), name="web"))
    await _serve(tasks)


async def serve_web(cfg: CentralConfig, store: Store) -> None:
    """The dashboard alone: commands over its own broker connection; the desk follows the
    store's change feed by itself."""
    from central_sync.security_wiring import central_hooks

    serve = _web_serve(cfg)
    if serve is None:
        raise CentralConfigError("the web app is not configured (add a [web] section)", "web")
    publisher = CommandPublisher(cfg, store, sign_command=central_hooks(cfg).sign_command,
                                 client_id=f"{cfg.broker.client_id}-web")
    await _serve([asyncio.create_task(publisher.run(), name="web-broker"),
                  asyncio.create_task(serve(cfg, store, publisher), name="web"),
                  asyncio.create_task(_systemd_watchdog(), name="systemd-watchdog")])


async def _run_until_signal(main_coro: Coroutine[Any, Any, None]) -> None:
    loop = asyncio.get_running_loop()
    main = asyncio.create_task(main_coro)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await main


def _run_process(args: argparse.Namespace, role: str,
                 main: Callable[[CentralConfig, Store], Coroutine[Any, Any, None]]) -> int:
    cfg = load_central_config(args.config)
    setup_logging(cfg.log_level)
    set_node_id("central")
    store = open_store(cfg.store_url)
    log_event(log, "central_starting", role=role, store=redact_url(cfg.store_url),
              broker=f"{cfg.broker.host}:{cfg.broker.port}")
    try:
        asyncio.run(_run_until_signal(main(cfg, store)))
    finally:
        store.close()
    log_event(log, "central_stopped", role=role)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_process(args, "all-in-one", serve_central)


def cmd_ingest(args: argparse.Namespace) -> int:
    return _run_process(args, f"ingest-{args.worker_id}" + ("" if args.lane == "all" else f"-{args.lane}"),
                        lambda cfg, store: serve_central(cfg, store, worker_id=args.worker_id, with_web=False,
                                                                 lane=args.lane))


def cmd_web(args: argparse.Namespace) -> int:
    return _run_process(args, "web", serve_web)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return func(args)
    except CentralConfigError as exc:
        _err(str(exc))
        return 2
    except CentralError as exc:
        _err(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
