"""``kentongan-central`` subcommands for the CA: ``ca init``, ``ca crl``, ``enrol``, ``revoke``,
``renew``, ``registry`` (loaded by central_sync.cli through ``register(subparsers)``).

Settings come from the ``[pki]`` section of central's config file (``PkiConfig``); the registry
tables live in central's ``database``::

    [pki]
    dir = "/var/lib/kentongan-central/pki"     # relative paths: relative to the config file
    broker_hosts = ["mqtt.example.id"]
    broker_port = 8883
    node_days = 730
    crl_days = 365
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from central_sync.cli_support import cli_command
from central_sync.config import load_central_config
from central_sync.enrol import (
    NodeInfo,
    certificates_due,
    crl_renewal_due,
    enrol_node,
    install_crl,
    regenerate_crl,
    renew_node,
    revoke_node,
    settings_from_mapping,
    utc,
)
from central_sync.errors import PkiError
from central_sync.pki import PkiFiles, PkiSettings, init_ca, load_private_key
from central_sync.registry import Registry
from central_sync.store import open_store
from edge.signing import key_fingerprint
from edge.sync.wire import encode


def load_settings(path: str) -> tuple[PkiSettings, str]:
    """PKI settings and the store URL holding the registry from central's config file
    (``[pki]`` section, ``central_sync.config.PkiConfig``)."""
    cfg = load_central_config(path)
    if cfg.pki is None:
        raise PkiError(f"{path}: no [pki] section")
    data = cfg.pki.model_dump()
    data["dir"] = str(data["dir"])
    return settings_from_mapping(data, Path(path).resolve().parent), cfg.store_url


def open_registry(store_url: str) -> Registry:
    """The registry in central's store (either backend; the process exits after the command)."""
    return Registry(open_store(store_url).registry_tables())


def _fingerprint(settings: PkiSettings) -> str:
    key = load_private_key(PkiFiles(settings.dir).command_key)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    assert isinstance(key, Ed25519PrivateKey)
    return key_fingerprint(key)


def _cmd_ca_init(args: argparse.Namespace) -> int:
    settings, _db = load_settings(args.config)
    files = init_ca(settings, force=args.force)
    print(f"CA created in {files.root}")
    print(f"broker certificate for {', '.join(settings.broker_hosts)} (+ localhost)")
    print(f"central command key fingerprint: {_fingerprint(settings)}")
    print("give this fingerprint to technicians: kentongan-edge install-bundle "
          "--central-fingerprint ...")
    return 0


def _cmd_ca_crl(args: argparse.Namespace) -> int:
    settings, db = load_settings(args.config)
    if args.renew_if_due:
        due, why = crl_renewal_due(settings)
        if not due:
            print(f"CRL not renewed: {why}")
            return 0
        print(f"renewing the CRL: {why}")
    crl = regenerate_crl(settings, open_registry(db))
    print(f"CRL rewritten ({len(list(crl))} revoked), valid until {crl.next_update_utc}")
    _install_crl(settings, args.config, args.install_to)
    return 0


def _install_crl(settings: PkiSettings, config: str, explicit: str | None) -> None:
    """Copy the CRL to the broker's crlfile: ``explicit`` (a command-line flag), else
    ``pki.broker_crl_file``; say so, or say what to do by hand."""
    pki = load_central_config(config).pki
    target = Path(explicit) if explicit else (pki.broker_crl_file if pki is not None else None)
    if target is None:
        print("copy crl.pem to the broker's crlfile and reload the broker "
              "(or set pki.broker_crl_file when the broker runs on this host)")
        return
    install_crl(settings, target)
    print(f"CRL installed as {target} (kentongan-broker-crl.path reloads the broker on the "
          "change: Mosquitto re-reads crlfile on SIGHUP)")


def _cmd_enrol(args: argparse.Namespace) -> int:
    settings, db = load_settings(args.config)
    info = NodeInfo(args.node_id, args.kelurahan, args.rw, args.rt, args.name, lat=args.lat, lon=args.lon)
    out = enrol_node(settings, open_registry(db), info, Path(args.out),
                     broker_host=args.broker_host, replace=args.replace)
    _audit(db, "enrol", args.node_id, replace=bool(args.replace))
    if args.replace:  # the node's older certificates are in the CRL now
        _install_crl(settings, args.config, None)
    cfg = load_central_config(args.config)
    if args.replace and cfg.broker.tls is not None:
        from central_sync.dynsec import BrokerControlError, reinstate_at_broker

        try:
            reinstate_at_broker(cfg, args.node_id)
        except BrokerControlError as exc:
            print(f"warning: the broker still denies {args.node_id} (revoked earlier): {exc}; "
                  f"run 'kentongan-central enrol ... --replace' again when it is reachable",
                  file=sys.stderr)
    print(f"enrolled {args.node_id}; bundle {out} (contains private keys: hand it over "
          "offline, delete after install)")
    print(f"central command key fingerprint: {_fingerprint(settings)}")
    return 0


def _audit(store_url: str, action: str, target: str, **detail: Any) -> None:
    """One row in central's audit log (``central_sync.audit``), in the same store."""
    from central_sync.audit import AuditLog, cli_actor

    store = open_store(store_url)
    try:
        AuditLog(store.audit_tables()).record(cli_actor(), action, target, detail)
    finally:
        store.close()


def _cmd_revoke(args: argparse.Namespace) -> int:
    settings, db = load_settings(args.config)
    crl = revoke_node(settings, open_registry(db), args.node_id)
    _audit(db, "revoke", args.node_id, crl_entries=len(list(crl)))
    _install_crl(settings, args.config, args.install_crl_to)
    print(f"revoked {args.node_id} in the registry (central rejects its events); CRL lists "
          f"{len(list(crl))} certificate(s), valid until {crl.next_update_utc}")
    cfg = load_central_config(args.config)
    if args.no_broker or cfg.broker.tls is None:
        why = "--no-broker" if args.no_broker else "broker.tls not configured (dev broker)"
        print(f"broker not told ({why}): an open session of {args.node_id} stays open (a CRL "
              "reload refuses only its next handshake); central drops everything it sends")
        return 0
    from central_sync.dynsec import BrokerControlError, revoke_at_broker

    try:
        revoke_at_broker(cfg, args.node_id)
    except BrokerControlError as exc:
        print(f"warning: the broker was NOT told, an open session of {args.node_id} stays "
              f"open: {exc}. Run 'kentongan-central revoke {args.node_id}' again when the "
              "broker is reachable, or copy crl.pem and reload the broker.", file=sys.stderr)
        return 1
    print(f"broker: open sessions of {args.node_id} cut, everything it sends is denied "
          "(dynamic-security); the broker's CRL refuses its next TLS handshake after a reload")
    return 0


def _cmd_renew(args: argparse.Namespace) -> int:
    settings, db = load_settings(args.config)
    reg = open_registry(db)
    ids = certificates_due(settings, reg) if args.due else [args.node_id]
    for node_id in ids:
        if node_id is None:
            raise PkiError("give NODE_ID or --due")
        cmd = renew_node(settings, reg, node_id, days=args.days)
        body = encode(cmd).decode()
        if args.send:
            from central_sync.command_send import publish_command

            publish_command(load_central_config(args.config), cmd)
            print(f"{node_id}: renewal command {cmd.command_id} sent (valid until the node "
                  "acts on it within its command window)")
        elif args.out_dir:
            out = Path(args.out_dir) / f"renew-{node_id}.json"
            out.write_text(body + "\n")
            print(f"{node_id}: renewal command written to {out}")
        else:
            print(body)
    return 0


def _cmd_registry(args: argparse.Namespace) -> int:
    _settings, db = load_settings(args.config)
    rows = open_registry(db).listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        where = f"  at {r['lat']:.5f},{r['lon']:.5f}" if r.get("lat") is not None and r.get("lon") is not None else ""
        print(f"{r['node_id']:<24} {r['status']:<9} {r['kelurahan_code']} RW {r['rw']:>3} "
              f"RT {r['rt']:>3}  cert until {utc(r['cert_not_after'])}  {r['display_name']}{where}")
    return 0



def register(subparsers: Any) -> None:
    """Add the PKI subcommands to central's CLI."""
    ca = subparsers.add_parser("ca", help="certificate authority")
    casub = ca.add_subparsers(dest="ca_command", required=True)
    init = casub.add_parser("init", help="create the CA, broker/central certificates and keys")
    init.add_argument("--config", required=True)
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cli_command(_cmd_ca_init))
    crl = casub.add_parser("crl", help="regenerate the CRL (run periodically)")
    crl.add_argument("--renew-if-due", action="store_true", help="only when the CRL is "
                     "missing or near its nextUpdate (for a daily timer)")
    crl.add_argument("--install-to", help="also copy the CRL there (the broker's crlfile)")
    crl.add_argument("--config", required=True)
    crl.set_defaults(func=cli_command(_cmd_ca_crl))

    en = subparsers.add_parser("enrol", help="enrol a node and write its bundle")
    en.add_argument("node_id")
    en.add_argument("--kelurahan", required=True, help="Kemendagri code PP.KK.CC.DDDD")
    en.add_argument("--rw", type=int, required=True)
    en.add_argument("--rt", type=int, required=True)
    en.add_argument("--name", required=True, help="display name of the post")
    en.add_argument("--lat", type=float, help="latitude of the post (WGS84 degrees, -90..90; with --lon): "
                    "placed on the desk's map; without it the map shows the kelurahan's centre, marked approximate")
    en.add_argument("--lon", type=float, help="longitude of the post (WGS84 degrees, -180..180; with --lat)")
    en.add_argument("--out", required=True, help="bundle file to write")
    en.add_argument("--broker-host", help="host name nodes connect to (default: first of "
                    "pki.broker_hosts)")
    en.add_argument("--replace", action="store_true", help="enrol an existing node again "
                    "(its old certificates are revoked)")
    en.add_argument("--config", required=True)
    en.set_defaults(func=cli_command(_cmd_enrol))

    rv = subparsers.add_parser("revoke", help="revoke a node (CRL + registry)")
    rv.add_argument("node_id")
    rv.add_argument("--install-crl-to", help="also copy the new CRL there (the broker's "
                    "crlfile, when the broker runs on this host)")
    rv.add_argument("--no-broker", action="store_true", help="do not tell the broker (CRL and "
                    "registry only; an open session stays open until the broker restarts)")
    rv.add_argument("--config", required=True)
    rv.set_defaults(func=cli_command(_cmd_revoke))

    rn = subparsers.add_parser("renew", help="renew a node certificate (signed config command)")
    rn.add_argument("node_id", nargs="?")
    rn.add_argument("--due", action="store_true", help="every node within renew_before_days")
    rn.add_argument("--days", type=int, help="validity (default pki.node_days)")
    rn.add_argument("--out-dir", help="write renew-<node>.json files instead of printing")
    rn.add_argument("--send", action="store_true",
                    help="publish the signed command to the node through the broker now")
    rn.add_argument("--config", required=True)
    rn.set_defaults(func=cli_command(_cmd_renew))

    rg = subparsers.add_parser("registry", help="enrolled and revoked nodes")
    rg.add_argument("--json", action="store_true")
    rg.add_argument("--config", required=True)
    rg.set_defaults(func=cli_command(_cmd_registry))
