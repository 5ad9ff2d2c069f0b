"""``kentongan-edge``: the thin command-line edge over the edge library.

User-facing wording lives here only. Exit codes: 0 ok, 1 runtime failure (systemd restarts the
service), 2 bad input (config, arguments, unknown button).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from edge import __version__
from edge.config import NodeConfig, check_state_dir, config_errors, load_config, read_config_file
from edge.control import request, socket_path
from edge.errors import ConfigError, ControlError, KentonganError

#: Optional modules that add subcommands with ``register(subparsers)``.
EXTENSIONS = ("edge.bundle", "edge.selftest", "edge.install_files", "edge.update.cli_update")


def _load(path: str) -> NodeConfig:
    """The node config, with a usable ``storage.state_dir`` (``ConfigError`` otherwise)."""
    cfg = load_config(path)
    check_state_dir(cfg)
    return cfg


def _cmd_validate(args: argparse.Namespace) -> int:
    path = args.config or args.path
    if not path:
        raise ConfigError("give the config file: validate-config --config PATH")
    data = read_config_file(path)
    errors = config_errors(data)
    if not errors:
        print(f"{path}: valid")
        return 0
    for err in errors:
        print(f"error: {err.key_path}: {err.reason}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from edge.agent import run_agent
    from edge.logs import set_node_id, setup_logging

    cfg = load_config(args.config)
    if args.state_dir:
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(
            update={"state_dir": Path(args.state_dir).absolute()})})
    check_state_dir(cfg)
    set_node_id(cfg.node.node_id)
    setup_logging(cfg.log_level)
    asyncio.run(run_agent(cfg, simulate=args.simulate))
    return 0


def _cmd_sim_press(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    names = [b.name for b in cfg.buttons]
    if args.button not in names:
        raise ControlError(f"unknown button {args.button!r}; known buttons: "
                           + (", ".join(names) or "none configured"))
    reply = request(socket_path(cfg.storage.state_dir),
                    {"op": "press", "button": args.button, "hold": args.hold},
                    timeout=args.hold + 30)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    siren = reply.get("siren", {})
    print(f"pressed {args.button} for {args.hold:g}s; siren "
          f"{'ON' if siren.get('relay_on') or siren.get('playing') else 'off'}"
          f" pattern={siren.get('pattern')}")
    return 0


def _format_status(st: dict[str, Any]) -> str:
    siren = st.get("siren", {})
    out = st.get("outbox", {})
    lines = [
        f"post      {st.get('display_name')} ({st.get('node_id')})",
        f"time      quality={st.get('time_quality')}",
        f"siren     {'PLAYING ' + str(siren.get('pattern')) if siren.get('playing') else 'idle'}"
        f" relay={'on' if siren.get('relay_on') else 'off'}"
        + (f" trigger={siren['trigger']['source']}:{siren['trigger']['detail']}"
           if siren.get("trigger") else ""),
    ]
    hist = siren.get("history") or []
    if hist:
        lines.append("          recent: " + ", ".join(
            f"{'on' if on else 'off'} {ago:.1f}s ago" for ago, on in hist[-6:]))
    incidents = st.get("open_incidents") or {}
    lines.append("incident  " + (", ".join(
        f"{k} {v['incident_id'][:8]}" + (f" (ack by {v['acknowledged_by']})"
                                         if v.get("acknowledged_by") else "")
        for k, v in incidents.items()) or "none open"))
    lines.append(f"outbox    ready={out.get('ready', 0)} in_flight={out.get('in_flight', 0)} "
                 f"acked={out.get('acked', 0)}")
    for kind, counts in sorted((out.get("by_type") or {}).items()):
        lines.append(f"          {kind:<18} " + " ".join(f"{k}={v}" for k, v in counts.items()))
    sync = st.get("sync", {})
    lines.append(f"sync      enabled={sync.get('enabled')} connected={sync.get('connected')}"
                 + (f" state={sync['state']}" if sync.get("state") else ""))
    if sync.get("reason") and not sync.get("connected"):
        lines.append(f"          cause={sync['reason']}: {sync.get('error') or ''}")
    central = sync.get("central") or {}
    if central:
        lines.append("central   " + (("online: " + ", ".join(central.get("online") or []))
                                     if central.get("seen") else "presence not seen (assumed there)")
                     + ("" if central.get("present") else "  -- NO CENTRAL ONLINE"))
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    try:
        reply = request(socket_path(cfg.storage.state_dir), {"op": "status"}, timeout=10)
    except ControlError:
        reply = {"ok": True, "status": _offline_status(cfg), "agent": "not running"}
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    st = reply["status"]
    if args.json:
        print(json.dumps(st, indent=2, default=str))
    else:
        if reply.get("agent") == "not running":
            print("agent     NOT RUNNING (showing the outbox on disk)")
        print(_format_status(st))
    return 0


def _offline_status(cfg: Any) -> dict[str, Any]:
    """The outbox on disk, read-only (``edge.outbox.readonly``): a status command must never
    create, migrate or write the database of an agent that may be starting right now."""
    import sqlite3

    from edge.outbox.readonly import read_counts

    db = Path(cfg.storage.state_dir) / "outbox.db"
    counts: dict[str, Any] = {}
    if db.exists():
        try:
            counts = read_counts(db)
        except sqlite3.Error as exc:
            counts = {"error": f"{type(exc).__name__}: {exc}"[:200]}
    return {"node_id": cfg.node.node_id, "display_name": cfg.node.display_name,
            "outbox": counts, "siren": {}, "sync": {"enabled": cfg.sync.enabled}}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kentongan-edge", description="Kentongan RT post agent.")
    p.add_argument("--version", action="version", version=f"kentongan-edge {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate-config", help="check a node config file")
    v.add_argument("path", nargs="?", help="config file (same as --config)")
    v.add_argument("--config", help="config file")
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser("run", help="run the post agent")
    r.add_argument("--config", required=True)
    r.add_argument("--simulate", action="store_true",
                   help="gpiozero MockFactory pins, fake camera and fake modem")
    r.add_argument("--state-dir", help="override storage.state_dir")
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("sim", help="drive a simulated post")
    ssub = s.add_subparsers(dest="sim_command", required=True)
    press = ssub.add_parser("press", help="press a simulated button")
    press.add_argument("button")
    press.add_argument("--hold", type=float, default=0.1, help="seconds to hold")
    press.add_argument("--config", required=True)
    press.set_defaults(func=_cmd_sim_press)

    st = sub.add_parser("status", help="siren, open incident and outbox of a post")
    st.add_argument("--config", required=True)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_status)

    for name in EXTENSIONS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        register = getattr(mod, "register", None)
        if register is not None:
            register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"error: {exc.key_path}: {exc.reason}" if exc.key_path else f"error: {exc}",
              file=sys.stderr)
        return 2
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KentonganError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file named in the config: readable message, no traceback
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
