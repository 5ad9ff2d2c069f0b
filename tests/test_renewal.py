"""Certificate renewal without a site visit: `kentongan-central renew NODE --send` publishes a
signed config command; the running post verifies it, installs the new certificate for its
existing key, and reconnects with it after a broker restart."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from edge.demo import Demo


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_renewal_is_delivered_installed_and_used(tmp_path: Path) -> None:
    demo = Demo(tmp_path / "demo", posts=[("pos-renew-01", "Pos Ronda Renew", 2, 7)])
    try:
        demo.start()
        cert = tmp_path / "demo" / "pos-renew-01" / "root" / "etc" / "kentongan" / "keys" / \
            "node.crt"
        before = _serial(cert)
        demo.wait(lambda: demo.status(0)["sync"].get("connected"), 30, "post connected")
        out = demo.central("renew", "pos-renew-01", "--send", "--config", str(demo.central_cfg))
        assert "sent" in out
        demo.wait(lambda: _serial(cert) != before, 30, "renewed certificate installed")
        assert cert.with_name("node.crt.prev").exists()
        # The new certificate is accepted by the broker: reconnect and drain a fresh event.
        assert demo.broker is not None
        demo.broker.restart()
        demo.edge("sim", "press", "patrol", "--hold", "0.1", "--config", str(demo.post_cfgs[0]))
        demo.wait(lambda: any(e["type"] == "PATROLI" for e in demo.central_events()), 30,
                  "an event over the renewed certificate")
        cmds = [e for e in demo.central_events() if e["type"] == "COMMAND"
                and e["payload"].get("action") == "config"]
        assert cmds and cmds[0]["payload"]["ok"] is True
    finally:
        demo.stop()
