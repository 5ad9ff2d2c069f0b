"""``kentongan-central user add|remove|set-role`` (audited) and ``kentongan-central export-cap``
(registered by cli.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import logging
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from central_sync.audit import AuditLog, cli_actor
from central_sync.cap import incident_messages, to_xml
from central_sync.config import load_central_config
from central_sync.errors import AuthError, CentralConfigError
from central_sync.incidents import IncidentBook
from central_sync.store import Store, open_store
from central_sync.users import RtRef, UserStore
from central_sync.web_settings import WebSettings
from edge.logs import log_event

log = logging.getLogger("central_sync.cli_web")
ATOM = "http://www.w3.org/2005/Atom"


def register(sub: Any) -> None:
    p = sub.add_parser("user", help="command-centre accounts")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    a = usub.add_parser("add", help="add an account (password from stdin or --password-file)")
    a.add_argument("name", help="user name")
    a.add_argument("--role", required=True, choices=("operator", "rt_admin", "admin"))
    a.add_argument("--rt", action="append", default=[], metavar="KEL/RW/RT",
                   help="an RT of an rt_admin, e.g. 33.74.01.1001/5/3 (repeatable)")
    a.add_argument("--password-file", type=Path, help="file whose first line is the password")
    a.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    a.set_defaults(func=cmd_user_add)
    r = usub.add_parser("remove", help="delete an account (its sessions end at once)")
    r.add_argument("name", help="user name")
    r.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    r.set_defaults(func=cmd_user_remove)
    sr = usub.add_parser("set-role", help="change an account's role (and RTs)")
    sr.add_argument("name", help="user name")
    sr.add_argument("--role", required=True, choices=("operator", "rt_admin", "admin"))
    sr.add_argument("--rt", action="append", default=[], metavar="KEL/RW/RT",
                    help="an RT of an rt_admin (repeatable)")
    sr.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    sr.set_defaults(func=cmd_user_set_role)

    e = sub.add_parser("export-cap", help="export incidents as CAP 1.2 (Atom feed of alerts)")
    e.add_argument("--config", required=True, type=Path, help="central config file (TOML)")
    e.add_argument("--out", type=Path, help="output file (default: stdout)")
    e.add_argument("--incident", help="only this incident: write its latest CAP alert alone")
    e.set_defaults(func=cmd_export_cap)


def _read_password(path: Path | None) -> str:
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").splitlines()[0]
        except (OSError, IndexError) as exc:
            raise CentralConfigError(f"cannot read a password: {exc}", "--password-file") from None
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise AuthError("passwords differ")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def cmd_user_add(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.config)
    rts = [RtRef.parse(r) for r in args.rt]
    password = _read_password(args.password_file)
    store = open_store(cfg.store_url)
    try:
        user = UserStore(store.desk()).add(args.name, args.role, password, rts)
        _audit_cli(store, "user_add", user.name, {"role": user.role.value,
                                                  "rts": sorted(str(r) for r in user.rts)})
    finally:
        store.close()
    log_event(log, "user_added", user=user.name, role=user.role.value,
              rts=[str(r) for r in user.rts])
    print(f"ok: {user.name} ({user.role.value}"
          + (f"; RTs {', '.join(sorted(str(r) for r in user.rts))}" if user.rts else "") + ")")
    return 0


def _audit_cli(store: Store, action: str, target: str, detail: dict[str, Any]) -> None:
    AuditLog(store.audit_tables()).record(cli_actor(), action, target, detail)


def cmd_user_remove(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.config)
    store = open_store(cfg.store_url)
    try:
        UserStore(store.desk()).remove(args.name)
        _audit_cli(store, "user_remove", args.name, {})
    finally:
        store.close()
    log_event(log, "user_removed", user=args.name)
    print(f"ok: {args.name} removed")
    return 0


def cmd_user_set_role(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.config)
    rts = [RtRef.parse(r) for r in args.rt]
    store = open_store(cfg.store_url)
    try:
        user = UserStore(store.desk()).set_role(args.name, args.role, rts)
        _audit_cli(store, "user_role", user.name, {"role": user.role.value,
                                                   "rts": sorted(str(r) for r in user.rts)})
    finally:
        store.close()
    log_event(log, "user_role_changed", user=user.name, role=user.role.value)
    print(f"ok: {user.name} is now {user.role.value}")
    return 0


def cmd_export_cap(args: argparse.Namespace) -> int:
    cfg = load_central_config(args.config)
    settings = WebSettings.from_config(cfg)
    store = open_store(cfg.store_url)
    try:
        book = IncidentBook(store.desk(), settings.group_window_s)
        nodes = {n["node_id"]: dict(n) for n in store.list_nodes()}
        incidents = book.incidents()
        if args.incident:
            incidents = [i for i in incidents if i.incident_id == args.incident]
            if not incidents:
                raise CentralConfigError("no such incident", "--incident")

        def alerts(inc: Any) -> list[bytes]:
            msgs = incident_messages(inc, book.history(inc.incident_id), nodes.get(inc.node_id),
                                     sender=settings.cap_sender, exercise=settings.cap_exercise,
                                     expires_hours=settings.cap_expires_hours)
            return [to_xml(msgs[-1])]

        if args.incident:
            body = alerts(incidents[0])[0]
        else:
            feed = ET.Element("feed", {"xmlns": ATOM})
            ET.SubElement(feed, "id").text = f"urn:kentongan:cap-export:{settings.cap_sender}"
            ET.SubElement(feed, "title").text = "Kentongan incidents (CAP 1.2)"
            ET.SubElement(feed, "updated").text = dt.datetime.now(dt.UTC).isoformat()
            for inc in incidents:
                entry = ET.SubElement(feed, "entry")
                ET.SubElement(entry, "id").text = f"urn:kentongan:incident:{inc.incident_id}"
                ET.SubElement(entry, "title").text = f"{inc.type} at {inc.node_id}"
                ET.SubElement(entry, "updated").text = dt.datetime.fromtimestamp(
                    inc.updated_at, dt.UTC).isoformat()
                content = ET.SubElement(entry, "content", {"type": "application/cap+xml"})
                content.append(ET.fromstring(alerts(inc)[0]))
            body = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
    finally:
        store.close()
    log_event(log, "cap_exported", incidents=len(incidents), out=str(args.out or "-"))
    if args.out:
        args.out.write_bytes(body)
    else:
        sys.stdout.buffer.write(body)
    return 0

