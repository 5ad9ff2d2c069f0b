"""Technician self-test against a real broker (production config), mock pins and fake devices."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from central_sync.broker import LocalMosquitto, production_broker
from central_sync.enrol import NodeInfo, enrol_node, revoke_node
from central_sync.pki import PkiFiles, PkiSettings, init_ca
from central_sync.registry import Registry
from edge import selftest
from edge.bundle import install_bundle
from edge.config import NodeConfig, load_config
from edge.selftest import FAIL, PASS, SelftestOptions, exit_code, run_selftest

NODE = "rt05-selftest"


class Site:
    def __init__(self, root: Path) -> None:
        self.settings = PkiSettings(dir=root / "pki")
        self.files = init_ca(self.settings)
        self.registry = Registry(sqlite3.connect(root / "central.db"))
        bundle = enrol_node(self.settings, self.registry,
                            NodeInfo(NODE, "33.74.10.1001", 5, 5, "Pos RT 05"),
                            root / "node.bundle")
        self.broker: LocalMosquitto = production_broker(
            root / "broker", ca_file=self.files.ca_cert, cert_file=self.files.broker_cert,
            key_file=self.files.broker_key, crl_file=self.files.crl).start()
        cfg_path = install_bundle(bundle, root / "post")
        text = cfg_path.read_text()
        text = text.replace('broker_host = "localhost"', 'broker_host = "127.0.0.1"')
        text = text.replace("broker_port = 8883", f"broker_port = {self.broker.port}")
        text = text.replace('incident = "PANIC"\nhold_seconds = 2.0\n',
                            'incident = "PANIC"\nhold_seconds = 2.0\n\n[[buttons]]\n'
                            'name = "loop"\npin = 22\nincident = "PANIC"\n'
                            'normally_closed = true\n\n[modem]\nenabled = true\n')
        cfg_path.write_text(text)
        self.cfg_path = cfg_path
        self.cfg: NodeConfig = load_config(cfg_path)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("selftest"))
    try:
        yield s
    finally:
        s.broker.stop()


def _by_name(results: list[selftest.CheckResult]) -> dict[str, selftest.CheckResult]:
    return {r.name: r for r in results}


def test_simulated_post_passes_every_required_check(site: Site) -> None:
    results = run_selftest(site.cfg, SelftestOptions(simulate=True))
    by = _by_name(results)
    for name in ("config", "certificate", "siren", "button panic", "button loop", "camera",
                 "modem", "broker"):
        assert by[name].status == PASS, (name, by[name])
    assert "round trip" in by["broker"].detail
    assert exit_code(results) == 0


def test_siren_chirp_really_toggles_the_pin(site: Site) -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    res = selftest.check_siren(site.cfg, SelftestOptions(pin_factory=factory))
    assert res.status == PASS
    pin = factory.pin(site.cfg.siren.pin)
    states = [bool(s) for _, s in pin.states]
    assert True in states and states[-1] is False  # went on, ended off


def test_open_nc_loop_is_reported_as_tamper(site: Site) -> None:
    factory = MockFactory(pin_class=MockPWMPin)  # not primed: pull-up keeps the NC pin high
    results = selftest.check_buttons(site.cfg, SelftestOptions(pin_factory=factory))
    loop = _by_name(results)["button loop"]
    assert loop.status == FAIL and "tamper" in loop.detail and loop.hint
    assert _by_name(results)["button panic"].status == PASS


def test_expired_certificate_fails_with_hint(site: Site) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=5000)
    res = selftest.check_certificate(site.cfg, SelftestOptions(now=lambda: later))
    assert res.status == FAIL and "EXPIRED" in res.detail and "renew" in res.hint
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=site.settings.node_days - 10)
    assert selftest.check_certificate(site.cfg, SelftestOptions(now=lambda: soon)).status == \
        "warn"


def test_broker_refuses_a_foreign_certificate(site: Site, tmp_path: Path) -> None:
    foreign = PkiSettings(dir=tmp_path / "foreign")
    init_ca(foreign)
    bundle = enrol_node(foreign, Registry(sqlite3.connect(":memory:")),
                        NodeInfo(NODE, "33.74.10.1001", 5, 5, "x"), tmp_path / "f.bundle")
    cfg = load_config(install_bundle(bundle, tmp_path / "post"))
    assert cfg.sync.tls is not None
    tls = cfg.sync.tls.model_copy(update={"ca_file": site.cfg.sync.tls.ca_file})  # type: ignore[union-attr]
    sync = cfg.sync.model_copy(update={"tls": tls, "broker_host": "127.0.0.1",
                                       "broker_port": site.broker.port})
    res = selftest.check_broker(cfg.model_copy(update={"sync": sync}),
                                SelftestOptions(broker_timeout=3))
    assert res.status == FAIL and res.hint


def test_revoked_certificate_fails_and_cli_exits_nonzero(
        site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    revoke_node(site.settings, site.registry, NODE)
    text = site.cfg_path.read_text().replace(
        'key_file = ', f'crl_file = "{PkiFiles(site.settings.dir).crl}"\nkey_file = ', 1)
    site.cfg_path.write_text(text)
    parser = argparse.ArgumentParser()
    selftest.register(parser.add_subparsers())
    args = parser.parse_args(["selftest", "--config", str(site.cfg_path), "--json",
                              "--simulate", "--no-siren"])
    assert args.func(args) == 1
    out = json.loads(capsys.readouterr().out)
    cert = next(c for c in out["checks"] if c["name"] == "certificate")
    assert out["ok"] is False and cert["status"] == "fail" and "REVOKED" in cert["detail"]
    assert "enrol" in cert["hint"]
