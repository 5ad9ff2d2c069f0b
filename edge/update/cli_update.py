"""``kentongan-update`` (also ``kentongan-edge update ...``) and
``kentongan-edge trust-release-key``.

    kentongan-update recover            boot step: repair any half state (before the agent)
    kentongan-update run                the service loop (kentongan-update.service)
    kentongan-update check              one pass now
    kentongan-update status             links, state file, last result
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from edge import __version__
from edge.errors import ConfigError, KentonganError
from edge.signing import key_fingerprint, load_verify_key

DEFAULT_CONFIG = "/etc/kentongan/update.toml"


def build_updater(config: Path) -> Any:
    from edge.bundle import credential_path
    from edge.config import load_config
    from edge.update.fetch import ReleaseClient, ServerTls
    from edge.update.health import control_requester
    from edge.update.install import InstallOptions
    from edge.update.supervisor import SystemdService
    from edge.update.switch import Layout
    from edge.update.updater import Updater, load_update_config

    cfg = load_update_config(config)
    node = load_config(cfg.node_config)
    tls = node.sync.tls
    if tls is None or tls.cert_file is None or tls.key_file is None:
        raise ConfigError("the node config has no sync.tls client certificate: releases are "
                          "fetched with it", "sync.tls")
    client = ReleaseClient(cfg.server_url, ServerTls(tls.ca_file, tls.cert_file,
                                                     credential_path(tls.key_file)),
                           rate_bytes_per_s=cfg.rate_bytes_per_s)
    return Updater(Layout(cfg.root), client, load_verify_key(cfg.release_key_file),
                   SystemdService(), control_requester(node.storage.state_dir),
                   sync_enabled=node.sync.enabled,
                   install=InstallOptions(python=cfg.python, system_site_packages=
                                          cfg.system_site_packages, nice=cfg.nice),
                   health_window=cfg.health_window_seconds,
                   crash_loop_restarts=cfg.crash_loop_restarts,
                   crash_loop_seconds=cfg.crash_loop_seconds), cfg


def _root_of(args: argparse.Namespace) -> Path:
    if args.root:
        return Path(args.root)
    from edge.update.updater import load_update_config

    return load_update_config(Path(args.config)).root


def _cmd_recover(args: argparse.Namespace) -> int:
    from edge.update.switch import Layout, recover

    for action in recover(Layout(_root_of(args))) or ["nothing to repair"]:
        print(action)
    return 0


def _cmd_adopt(args: argparse.Namespace) -> int:
    """First installation by hand: releases/<version> was made with pip by a technician."""
    import subprocess

    from edge.update.switch import Layout

    layout = Layout(_root_of(args))
    layout.ensure()
    py = layout.release(args.release) / "bin" / "python"
    try:
        res = subprocess.run([str(py), "-I", "-c", "import importlib.metadata as m; "
                              "print(m.version('kentongan'))"], capture_output=True, text=True,
                             timeout=60)
        found = res.stdout.strip() if res.returncode == 0 else res.stderr.strip()[-200:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        found = str(exc)
    if found != args.release:
        raise KentonganError(f"{py.parent.parent} does not hold kentongan {args.release} "
                             f"({found})")
    os.sync()
    layout.mark_complete(args.release)
    layout.set_link(layout.good, args.release)
    layout.set_link(layout.current, args.release)
    print(f"adopted {args.release}: current and good -> releases/{args.release}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from edge.update.switch import Layout

    layout = Layout(_root_of(args))
    out = {"current": layout.link_target(layout.current), "good": layout.link_target(layout.good),
           "installed": layout.complete_versions(), **asdict(layout.load_state())}
    print(json.dumps(out, indent=2) if args.json else
          "\n".join(f"{k:<14} {v}" for k, v in out.items()))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    updater, _cfg = build_updater(Path(args.config))
    print(updater.check_once())
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from edge.logs import setup_logging

    setup_logging("INFO")
    updater, cfg = build_updater(Path(args.config))
    signal.signal(signal.SIGTERM, lambda *_: updater.stop.set())
    updater.run(cfg.poll_seconds)
    return 0


def _cmd_trust(args: argparse.Namespace) -> int:
    key = load_verify_key(args.key)
    fp = key_fingerprint(key)
    if args.fingerprint and args.fingerprint.replace(":", "").lower() != fp.replace(":", ""):
        raise KentonganError(f"release key fingerprint is {fp}, expected {args.fingerprint}: "
                             "not installed")
    dest = Path(args.prefix) / "etc" / "kentongan" / "keys" / "release.pub"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(".release.pub.tmp")
    shutil.copyfile(args.key, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dest)
    print(f"release key {fp} trusted: {dest}")
    return 0


def _add_update_commands(sub: Any) -> None:
    for name, func, help in (("recover", _cmd_recover, "repair any half-done update (boot)"),
                             ("run", _cmd_run, "the updater service loop"),
                             ("check", _cmd_check, "one update pass now"),
                             ("status", _cmd_status, "installed versions and update state"),
                             ("adopt", _cmd_adopt, "make a hand-installed releases/<version> "
                              "current and good (first installation)")):
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"update config (default "
                       f"{DEFAULT_CONFIG})")
        if name == "adopt":
            p.add_argument("release", help="version directory under releases/")
        if name in ("recover", "status", "adopt"):
            p.add_argument("--root", help="update root (instead of reading --config)")
        if name == "status":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)


def register(subparsers: Any) -> None:
    up = subparsers.add_parser("update", help="software updates of this post")
    _add_update_commands(up.add_subparsers(dest="update_command", required=True))
    t = subparsers.add_parser("trust-release-key", help="install central's release public key")
    t.add_argument("key", help="release.pub from 'kentongan-central release keygen'")
    t.add_argument("--fingerprint", help="expected fingerprint (printed by keygen)")
    t.add_argument("--prefix", default="/", help="install root (default /)")
    t.set_defaults(func=_cmd_trust)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kentongan-update", description="Kentongan post updater.")
    p.add_argument("--version", action="version", version=f"kentongan-update {__version__}")
    _add_update_commands(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KentonganError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
