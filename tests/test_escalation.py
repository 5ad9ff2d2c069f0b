"""Escalation of an unacknowledged P1: two real web apps (two desks, two sweepers) on one store,
a real HTTP server the test starts as the supervisor's webhook (its first answer is a 500, so the
retry is exercised), and an SMS gateway command run for real. Exactly one notification per
incident, recorded in the incident's timeline; an acknowledged P1 or a P2 is never escalated."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from helpers_sync import wait_until

from central_sync.escalation import CommandNotifier, Escalation, Escalator, NotifyError, WebhookNotifier, deliver
from central_sync.supervision_settings import EscalationSettings
from central_sync.web.testing import WebEnv, event


class Supervisor(ThreadingHTTPServer):
    """The supervisor's webhook: records each POST; answers 500 to the first ``fail_first``."""

    def __init__(self, fail_first: int = 1) -> None:
        self.received: list[dict[str, Any]] = []
        self.answers: list[int] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/escalate"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        with self.lock:
            return [body for body, code in zip(self.received, self.answers, strict=True) if code == 200]


class _Handler(BaseHTTPRequestHandler):
    server: Supervisor

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            code = 500 if len(self.server.received) < self.server.fail_first else 200
            self.server.received.append(body)
            self.server.answers.append(code)
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    s = Supervisor()
    try:
        yield s
    finally:
        s.close()


def test_unacknowledged_p1_escalates_once_across_two_web_processes(tmp_path: Path, supervisor: Supervisor) -> None:
    web = {"escalation": {"after_s": 5.0, "webhook_url": supervisor.url, "retry_min_s": 0.2,
                          "retry_max_s": 0.5},
           "supervision": {"sweep_s": 0.2, "blind_after_s": 600.0, "quiet_after_s": None}}
    one = WebEnv(tmp_path / "central.db", web)
    two = WebEnv(tmp_path / "central.db", web)
    try:
        one.node("pos-a")
        two.sync()
        old = time.time() - 60
        late_p1, p2 = one.events(event("pos-a", "PANIC", at=old), event("pos-a", "PENCURIAN_HEWAN", at=old))
        ancient = one.events(event("pos-c", "PANIC", at=time.time() - 2 * 86400))[0]  # beyond max_age_s
        fresh_p1 = one.events(event("pos-b", "KEBAKARAN"))[0]
        two.sync()
        late, low, fresh, old_news = (one.incident_of(e) for e in (late_p1, p2, fresh_p1, ancient))
        # The fresh P1 is acknowledged in time (well inside after_s).
        one.ctx.desk.book.step(fresh, "acknowledged", "op", "on it")

        book = one.ctx.desk.book
        wait_until(lambda: any(h["step"] == "escalation_delivered" for h in book.history(late)), 60,
                   what="escalation delivered")
        [body] = supervisor.delivered()
        assert body["incident_id"] == late and body["priority"] == 1 and body["node_id"] == "pos-a"
        assert "not acknowledged" in body["text"] and body["unacknowledged_s"] >= 5
        assert supervisor.answers == [500, 200]  # the first attempt failed and was retried

        # Both desks keep sweeping well past after_s for the fresh P1: still exactly one.
        s1, s2 = one.ctx.desk.supervisor, two.ctx.desk.supervisor
        start = (s1.link.checked_at, s2.link.checked_at)
        wait_until(lambda: s1.link.checked_at > start[0] + 6 and s2.link.checked_at > start[1] + 6, 60,
                   what="both sweepers sweep for 6 more seconds")
        steps = [h["step"] for h in book.history(late)]
        assert steps.count("escalated") == 1 and steps.count("escalation_delivered") == 1
        assert len(supervisor.delivered()) == 1
        assert all(h["step"] != "escalated" for i in (low, fresh, old_news) for h in book.history(i))

        # The timeline shows it in words on the incident page.
        one.user("op", "operator")
        client, _csrf = one.client("op")
        page = client.get(f"/incidents/{late}?lang=en").text
        assert "Escalated to the supervisor" in page and "Supervisor notified" in page
    finally:
        two.close()
        one.close()


def _message() -> Escalation:
    return Escalation("inc-1", "pos-a", "PANIC", 1, time.time() - 400, 400.0, "Pos Melati")


def test_sms_command_notifier_runs_the_gateway_with_the_text(tmp_path: Path) -> None:
    out = tmp_path / "sms.txt"
    script = f"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())"
    settings = EscalationSettings(attempts=2, retry_min_s=0.05, retry_max_s=0.1)
    ok, attempts, error = asyncio.run(deliver(CommandNotifier([sys.executable, "-c", script]), _message(), settings))
    assert ok and attempts == 1 and error == ""
    assert "PANIC" in out.read_text() and "Pos Melati" in out.read_text()
    failing = CommandNotifier([sys.executable, "-c", "import sys; sys.exit(3)"])
    ok, attempts, error = asyncio.run(deliver(failing, _message(), settings))
    assert not ok and attempts == 2 and "exited 3" in error


def test_webhook_notifier_reports_an_unreachable_supervisor() -> None:
    notifier = WebhookNotifier("http://127.0.0.1:9/none", timeout_s=2)  # discard port: refused
    with pytest.raises(NotifyError):
        asyncio.run(notifier.notify(_message()))


class RecordingNotifier:
    """A notifier that records what it was asked to deliver (the process's real delivery path)."""

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[Escalation] = []

    async def notify(self, message: Escalation) -> None:
        self.sent.append(message)


def test_a_claim_whose_claimer_died_is_claimed_again_after_its_lease(tmp_path: Path) -> None:
    """Process A claims a due P1 and dies before sending (no outcome on the timeline). Within the
    lease nobody claims it again (A might still be sending); after it, process B claims it (a
    second ``escalated`` step) and delivers; with an outcome recorded it is never claimed again.
    A P1 whose claimers keep dying is claimed at most ``max_claims`` times."""
    env = WebEnv(tmp_path / "central.db", {"supervision": {"blind_after_s": 600.0, "quiet_after_s": None}})
    try:
        env.node("pos-a")
        p1, other = env.events(event("pos-a", "PANIC", at=time.time() - 60),
                               event("pos-b", "KEBAKARAN", at=time.time() - 60))
        incident, doomed = env.incident_of(p1), env.incident_of(other)
        desk = env.ctx.desk
        settings = EscalationSettings(after_s=5.0, attempts=1, webhook_timeout_s=1.0, retry_max_s=1.0,
                                      claim_lease_s=30.0, max_claims=3)
        # The lease is never shorter than one full delivery (both notifiers timing out) plus a margin.
        assert settings.lease_s == 1 * (1.0 + 30.0) + 60.0
        dead, live = RecordingNotifier(), RecordingNotifier()
        process_a = Escalator(desk.tables, desk.book, settings, [dead])
        process_b = Escalator(desk.tables, desk.book, settings, [live])
        found = desk.book.get(incident)
        assert found is not None
        t0 = max(found.opened_at, time.time()) + settings.after_s + 1

        assert {i.incident_id for i in process_a.claim_due(t0)} == {incident, doomed}
        # A dies here, before sending. Inside the lease B must not claim again.
        assert process_b.claim_due(t0 + settings.lease_s - 1) == []
        t1 = t0 + settings.lease_s + 1
        again = process_b.claim_due(t1)
        assert {i.incident_id for i in again} == {incident, doomed}
        steps = [h for h in desk.book.history(incident) if h["step"] == "escalated"]
        assert len(steps) == 2 and "previous claim recorded no outcome" in steps[1]["note"]
        assert asyncio.run(process_b.deliver_all(next(i for i in again if i.incident_id == incident), "Pos A"))
        assert [m.incident_id for m in live.sent] == [incident] and dead.sent == []
        assert [h["step"] for h in desk.book.history(incident)].count("escalation_delivered") == 1

        # Delivered: never claimed again, however late. The doomed one (its claimers die too)
        # gets its third and last claim, then no more.
        t2 = t1 + settings.lease_s + 1
        assert [i.incident_id for i in process_a.claim_due(t2)] == [doomed]
        assert process_a.claim_due(t2 + settings.lease_s + 1) == []
        assert process_b.claim_due(t2 + 10 * settings.lease_s) == []
        assert [h["step"] for h in desk.book.history(incident)].count("escalated") == 2
        assert [h["step"] for h in desk.book.history(doomed)].count("escalated") == 3
    finally:
        env.close()
