"""The self-test's broker check (``edge.selftest``).

Definition: TLS connect with the node's own certificate (MQTT 5), subscribe to
``{prefix}/selftest/{node_id}/echo`` (the ACL grants each node read/write there and nowhere else
besides its own up/down trees), publish a random nonce at QoS 1, and require a successful PUBACK
and the nonce back within the timeout. It proves the CA, the certificate, the CRL and the ACL.
Plain threaded paho (``transport.make_paho_client``): a one-shot tool needs no event loop.
"""

from __future__ import annotations

import secrets
import ssl
import threading
import time
from typing import Any

from edge.config import NodeConfig
from edge.selftest_result import FAIL, PASS, SKIP, CheckResult, SelftestOptions


def check_broker(cfg: NodeConfig, opts: SelftestOptions) -> CheckResult:
    if not cfg.sync.enabled:
        return CheckResult("broker", SKIP, "sync disabled", "", required=False)

    from edge.sync.mqtt import connect_spec
    from edge.sync.transport import TransportError, make_paho_client, paho_connect

    where = f"{cfg.sync.broker_host}:{cfg.sync.broker_port}"
    spec = connect_spec(cfg.sync, f"{cfg.node.node_id}-selftest-{secrets.token_hex(3)}",
                        clean_start=True, session_expiry_s=0)
    try:
        client = make_paho_client(spec)
    except TransportError as exc:
        return CheckResult("broker", FAIL, f"cannot build the TLS connection: {exc}",
                           "the sync service fails the same way: see 'fix' of the certificate "
                           "line")
    topic = f"{cfg.sync.topic_prefix}/selftest/{cfg.node.node_id}/echo"
    nonce = secrets.token_hex(8).encode()
    cv = threading.Condition()
    state: dict[str, Any] = {"connected": None, "suback": False, "puback": None, "echo": False}

    def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any = None) -> None:
        with cv:
            state["connected"] = not rc.is_failure
            state["connect_rc"] = str(rc)
            cv.notify_all()

    def on_disconnect(*a: Any) -> None:
        with cv:
            if state["connected"] is None:
                state["connected"] = False
            cv.notify_all()

    def on_subscribe(*a: Any) -> None:
        with cv:
            state["suback"] = True
            cv.notify_all()

    def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any = None) -> None:
        with cv:
            state["puback"] = rc
            cv.notify_all()

    def on_message(c: Any, u: Any, msg: Any) -> None:
        with cv:
            state["echo"] = state["echo"] or msg.payload == nonce
            cv.notify_all()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_subscribe, client.on_publish = on_subscribe, on_publish
    client.on_message = on_message
    hint_tls = "check sync.broker_host/port, the node certificate (revoked? expired?) and the clock"
    try:
        paho_connect(client, spec)
    except (ssl.SSLError, OSError) as exc:
        return CheckResult("broker", FAIL, f"cannot connect to {where}: {exc}", hint_tls)
    client.loop_start()
    try:
        deadline = time.monotonic() + opts.broker_timeout
        with cv:
            cv.wait_for(lambda: state["connected"] is not None,
                        max(0.0, deadline - time.monotonic()))
            if not state["connected"]:
                return CheckResult("broker", FAIL, f"TLS/MQTT connection to {where} refused "
                                   f"({state.get('connect_rc', 'no CONNACK')})", hint_tls)
        client.subscribe(topic, qos=1)
        with cv:
            cv.wait_for(lambda: state["suback"], max(0.0, deadline - time.monotonic()))
        client.publish(topic, nonce, qos=1)
        with cv:
            cv.wait_for(lambda: state["puback"] is not None and state["echo"],
                        max(0.0, deadline - time.monotonic()))
            puback, echo = state["puback"], state["echo"]
    finally:
        client.disconnect()
        client.loop_stop()
    if puback is None:
        return CheckResult("broker", FAIL, "no PUBACK", "broker overloaded or link too slow")
    if puback.is_failure:
        return CheckResult("broker", FAIL, f"publish refused: {puback}", "broker ACL lacks "
                           "'pattern readwrite kentongan/v1/selftest/%u/#' (broker/acl)")
    if not echo:
        return CheckResult("broker", FAIL, "published but the echo never came back",
                           "check the broker ACL read rules (broker/acl)")
    return CheckResult("broker", PASS, f"mTLS to {where} as {cfg.node.node_id}, publish/subscribe "
                       "round trip ok")
