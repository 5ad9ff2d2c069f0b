"""Settings of post supervision and P1 escalation: ``[web.supervision]`` and ``[web.escalation]``
of central's config (every key optional). Core (not under ``central_sync.web``) because
``WebSettings`` parses them and the supervision sweep is not a web concern.

The relation between the numbers is written down in docs/desk.md ("Supervision"): a post sends a
heartbeat every ``sync.heartbeat_seconds`` (20 s by default), so ``offline_after_s`` (50 s) is
two missed heartbeats and a 10 s margin for latency: a post that dies just after a heartbeat is
shown offline 50 s later and its POST_OFFLINE incident opens within one sweep, both inside the
60 s target; one lost heartbeat (QoS 0) never makes a post flap. Ingest writes its link beat
every ``LINK_BEAT_S`` (5 s), so ``blind_after_s`` (20 s) is several missed beats.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SupervisionSettings(BaseModel):
    """``[web.supervision]``: when a post counts as offline, and who gets a POST_OFFLINE incident."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    offline_after_s: float = Field(50.0, ge=5, le=3600, description="A post not heard for this "
                                   "many seconds is shown offline (keep it at least twice the posts' "
                                   "heartbeat_seconds plus a margin; default two 20 s heartbeats and 10 s).")
    blind_after_s: float = Field(20.0, ge=2, le=600, description="Central counts itself blind "
                                 "(no ingest process connected to the broker) when no ingest "
                                 "process has written its link beat (every 5 s) for this long; "
                                 "post states then read 'unknown' and no POST_OFFLINE opens.")
    quiet_after_s: float | None = Field(45.0, ge=5, le=3600, description="Central also counts "
                                        "itself blind when its ingest processes are connected but "
                                        "received no message from any post for this long (a half-open "
                                        "link the MQTT keepalive has not noticed yet; every post sends "
                                        "a heartbeat every 20 s), provided central knows at least "
                                        "quiet_min_posts posts (with fewer, all of them dying at once "
                                        "is as likely as a broken link). None: only the link beat counts.")
    quiet_min_posts: int = Field(5, ge=1, le=1_000_000, description="Posts central must know before "
                                 "silence from all of them counts as central being blind.")
    sweep_s: float = Field(2.0, gt=0, le=60, description="How often the web process looks for "
                           "posts that went offline or came back, and for P1s to escalate.")
    supervised_by_default: bool = Field(True, description="Every post is supervised (opens a "
                                        "POST_OFFLINE incident when it goes offline) unless listed "
                                        "in 'unsupervised'.")
    supervised: tuple[str, ...] = Field((), description="Node ids supervised even when "
                                        "supervised_by_default is false.")
    unsupervised: tuple[str, ...] = Field((), description="Node ids never supervised (a post "
                                          "being installed, a post switched off for the season).")
    incident_horizon_s: float = Field(86400.0, gt=0, description="A post silent for longer than "
                                      "this when central first notices (central was down, or just "
                                      "upgraded) gets its outage recorded but no POST_OFFLINE "
                                      "incident: old news must not page anyone.")
    availability_days: float = Field(7.0, gt=0, le=90, description="Window of the per-post path "
                                     "availability and transmission-time figures.")
    availability_threshold: float = Field(0.95, ge=0, le=1, description="A post whose path "
                                          "availability over the window is below this fraction is "
                                          "flagged (EN 50136-1 practice flags a path under 95 %).")

    @model_validator(mode="after")
    def _disjoint(self) -> SupervisionSettings:
        both = set(self.supervised) & set(self.unsupervised)
        if both:
            raise ValueError(f"supervised and unsupervised both list {sorted(both)[0]}")
        return self

    def is_supervised(self, node_id: str) -> bool:
        if node_id in self.unsupervised:
            return False
        return self.supervised_by_default or node_id in self.supervised


#: Timeout of one run of the SMS gateway command (``escalation.CommandNotifier``).
SMS_TIMEOUT_S = 30.0


class EscalationSettings(BaseModel):
    """``[web.escalation]``: an unacknowledged P1 past ``after_s`` notifies a supervisor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    after_s: float = Field(300.0, gt=0, le=86400, description="Seconds a P1 may stay "
                           "unacknowledged before the supervisor is notified (once per incident).")
    webhook_url: str | None = Field(None, pattern=r"^https?://[^\s]+$", description="HTTP(S) URL "
                                    "that receives a JSON POST per escalation (an SMS gateway, a "
                                    "chat bridge); absent = no webhook.")
    webhook_timeout_s: float = Field(10.0, gt=0, le=120, description="Timeout of one webhook POST.")
    sms_command: tuple[str, ...] = Field((), description="Command (argv) run per escalation with "
                                         "the message on stdin, e.g. ['gammu-smsd-inject', 'TEXT', "
                                         "'+62...']; empty = none.")
    attempts: int = Field(5, ge=1, le=50, description="Delivery attempts per notifier.")
    retry_min_s: float = Field(1.0, gt=0, le=600, description="First retry delay (doubles, "
                                "jittered, up to retry_max_s).")
    retry_max_s: float = Field(60.0, gt=0, le=3600, description="Longest retry delay.")
    max_age_s: float = Field(86400.0, gt=0, description="P1s opened longer ago than this are not "
                             "escalated (old news when escalation is first enabled, or central was "
                             "down).")
    claim_lease_s: float = Field(600.0, gt=0, le=86400, description="A claimed escalation with no "
                                 "outcome on the timeline this long after the claim (the web process "
                                 "that claimed it died before sending) is claimed and sent again by "
                                 "a live process. Never taken shorter than one full delivery "
                                 "(see lease_s).")
    max_claims: int = Field(3, ge=1, le=20, description="Claims per incident (the first and its "
                            "retries after a lease expired); a P1 whose claimer keeps dying is not "
                            "claimed again after this many.")

    @property
    def lease_s(self) -> float:
        """The lease actually used: ``claim_lease_s``, or longer than a live claimer can take to
        record an outcome (every attempt of both notifiers timing out, with the longest retry
        delays in between) plus a minute's margin, so a slow but live claimer is never doubled."""
        per_attempt = self.webhook_timeout_s + SMS_TIMEOUT_S
        delivery = self.attempts * per_attempt + (self.attempts - 1) * self.retry_max_s
        return max(self.claim_lease_s, delivery + 60.0)
