"""``kentongan-central release ...``: keygen, build, list, verify, canary, rollout, status, serve.

Every subcommand takes ``--config`` (central's config: the ``[pki]`` section locates the CA and
the release key) and ``--root`` (release directory; default ``releases/`` next to the config).
"""

from __future__ import annotations

import argparse
import json
import signal
import time
from pathlib import Path
from typing import Any

from central_sync.cli_support import cli_command
from central_sync.config import load_central_config
from central_sync.errors import PkiError
from central_sync.pki import PkiFiles
from central_sync.release.build import BuildOptions, build_release
from central_sync.release.manifest import (
    ReleaseKeys,
    keygen,
    list_releases,
    load_release_key,
    release_dir,
    verify_release_dir,
)
from central_sync.release.rollout import RINGS, RolloutStore
from edge.signing import key_fingerprint, load_verify_key

ROLLOUT_DB = "rollout.db"


def _pki_dir(args: argparse.Namespace) -> Path:
    cfg = load_central_config(args.config)
    if cfg.pki is None:
        raise PkiError(f"{args.config}: no [pki] section")
    d = Path(cfg.pki.dir)
    return d if d.is_absolute() else (Path(args.config).resolve().parent / d)


def _root(args: argparse.Namespace) -> Path:
    if args.root:
        return Path(args.root).resolve()
    return Path(args.config).resolve().parent / "releases"


def _store(args: argparse.Namespace) -> RolloutStore:
    return RolloutStore(_root(args) / ROLLOUT_DB)


def _cmd_keygen(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.config)
    hosts = tuple(args.host or (cfg.pki.broker_hosts if cfg.pki else ["localhost"]))
    keys = keygen(_pki_dir(args), hosts, force=args.force)
    print(f"release key {keys.key} (keep it where releases are built, not on the service)")
    print(f"release key fingerprint: {key_fingerprint(load_verify_key(keys.pub))}")
    print(f"release server certificate {keys.server_cert} for {', '.join(hosts)}")
    print(f"posts: kentongan-edge trust-release-key {keys.pub.name} --fingerprint ...")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    key = load_release_key(_pki_dir(args))
    plats = tuple(p.strip() for p in args.platform.split(",") if p.strip())
    opts = BuildOptions(project_dir=Path(args.project).resolve(), root=_root(args),
                        platforms=plats, offline=args.offline,
                        wheelhouse=Path(args.wheelhouse).resolve() if args.wheelhouse else None,
                        min_from_version=args.min_from, notes=args.notes or "")
    m = build_release(opts, key)
    app = m.app_file()
    print(f"release {m.version} (updates from {m.min_from_version}) in {opts.root / m.version}")
    for plat, names in m.platforms.items():
        total = sum(m.files[n].size for n in names)
        print(f"  {plat:<8} {len(names):>3} wheels {total / 1e6:8.2f} MB")
    print(f"  app-only download: {app} {m.files[app].size / 1e6:.3f} MB")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    rels = list_releases(_root(args))
    if args.json:
        for m in rels:
            print(json.dumps({"version": m.version, "min_from_version": m.min_from_version,
                              "platforms": sorted(m.platforms), "created_at": m.created_at}))
        return 0
    for m in rels:
        plats = ", ".join(sorted(m.platforms))
        print(f"{m.version:<12} from >= {m.min_from_version:<10} {len(m.files):>3} wheels  "
              f"[{plats}]  {time.strftime('%Y-%m-%d %H:%M', time.gmtime(m.created_at))} UTC")
    if not rels:
        print("no releases")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    pub = Path(args.key) if args.key else ReleaseKeys.in_pki(_pki_dir(args)).pub
    root = _root(args)
    versions = [args.version] if args.version else [m.version for m in list_releases(root)]
    for v in versions:
        m = verify_release_dir(release_dir(root, v), pub)
        print(f"{v}: signature and {len(m.files)} wheel hashes OK")
    return 0


def _cmd_canary(args: argparse.Namespace) -> int:
    store = _store(args)
    for node in args.node_id:
        store.set_canary(node, not args.remove)
    print("canary posts: " + (", ".join(sorted(store.canaries())) or "none"))
    return 0


def _cmd_rollout(args: argparse.Namespace) -> int:
    root = _root(args)
    verify_release_dir(release_dir(root, args.version), ReleaseKeys.in_pki(_pki_dir(args)).pub)
    r = RolloutStore(root / ROLLOUT_DB).start(args.version, args.ring,
                                              max_fail_share=args.max_fail / 100.0,
                                              force=args.force)
    if r.status == "halted":
        print(f"rollout of {r.version} HALTED: {r.halted_reason}")
        return 1
    print(f"rollout of {r.version} to ring {r.ring} started (halts by itself above "
          f"{100 * r.max_fail_share:g}% failures)")
    return 0


def status_summary(store: RolloutStore) -> dict[str, Any]:
    latest = store.latest()
    out: dict[str, Any] = {"rollout": None, "nodes": store.nodes()}
    if latest is not None:
        failed, total = store.failures(latest.version, latest.ring)
        out["rollout"] = {"version": latest.version, "ring": latest.ring,
                          "status": latest.status, "halted_reason": latest.halted_reason,
                          "failed": failed, "posts_in_ring": total,
                          "not_healthy": len(store.not_healthy(latest.version, latest.ring))}
    return out


def _cmd_status(args: argparse.Namespace) -> int:
    s = status_summary(_store(args))
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    r = s["rollout"]
    if r is None:
        print("no rollout")
    else:
        state = f"HALTED: {r['halted_reason']}" if r["status"] == "halted" else "active"
        print(f"rollout {r['version']} ring {r['ring']}: {state}")
        print(f"  posts in ring {r['posts_in_ring']}, failed {r['failed']}, not yet healthy "
              f"{r['not_healthy']}")
    for n in s["nodes"]:
        print(f"{n['node_id']:<28} ring {n['ring']:<7} runs {n['running_version'] or '-':<10} "
              f"last report {n['report_state'] or '-'} {n['report_version'] or ''} "
              f"{n['report_reason'] or ''}".rstrip())
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from central_sync.release.serve import ReleaseServer, server_context

    pki = _pki_dir(args)
    files, keys = PkiFiles(pki), ReleaseKeys.in_pki(pki)
    ctx = server_context(files.ca_cert, keys.server_cert, keys.server_key, files.crl)
    srv = ReleaseServer((args.host, args.port), _root(args), _store(args), ctx)
    print(f"serving releases from {_root(args)} on https://{args.host}:{srv.server_address[1]}"
          " (client certificates required)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0



def register(subparsers: Any) -> None:
    rel = subparsers.add_parser("release", help="fleet software releases and staged rollout")
    sub = rel.add_subparsers(dest="release_command", required=True)

    def add(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", required=True, help="central config file (TOML)")
        p.add_argument("--root", help="release directory (default: releases/ next to --config)")
        p.set_defaults(func=cli_command(func))
        return p

    p = add("keygen", "create the release signing key and the release server certificate",
            _cmd_keygen)
    p.add_argument("--host", action="append", help="server host name (repeat; default "
                   "pki.broker_hosts)")
    p.add_argument("--force", action="store_true")
    p = add("build", "build and sign a release from a source tree", _cmd_build)
    p.add_argument("--project", default=".", help="source tree (default .)")
    p.add_argument("--platform", default="host,aarch64", help="comma list: host, aarch64, "
                   "x86_64 (default host,aarch64)")
    p.add_argument("--wheelhouse", help="take every wheel from this directory (no network)")
    p.add_argument("--offline", action="store_true", help="no network (no build isolation)")
    p.add_argument("--min-from", help="oldest version this release may update from")
    p.add_argument("--notes", help="release notes (one line)")
    p = add("list", "releases under the release root", _cmd_list)
    p.add_argument("--json", action="store_true")
    p = add("verify", "check signatures and wheel hashes", _cmd_verify)
    p.add_argument("version", nargs="?")
    p.add_argument("--key", help="release public key (default pki/release.pub)")
    p = add("canary", "name canary posts", _cmd_canary)
    p.add_argument("node_id", nargs="+")
    p.add_argument("--remove", action="store_true")
    p = add("rollout", "offer a release to a ring of posts", _cmd_rollout)
    p.add_argument("version")
    p.add_argument("--ring", required=True, choices=RINGS)
    p.add_argument("--max-fail", type=float, default=1.0, help="halt above this percentage "
                   "of failed posts in the ring (default 1)")
    p.add_argument("--force", action="store_true", help="skip the ring order and health gate")
    p = add("status", "rollout state and each post's version and update state", _cmd_status)
    p.add_argument("--json", action="store_true")
    p = add("serve", "HTTPS release server (client certificates required)", _cmd_serve)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
