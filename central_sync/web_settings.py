"""Settings of the command-centre desk: the ``[web]`` section of central's config (every key
optional). Core (not under ``central_sync.web``) because central's config parses it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from central_sync.errors import CentralConfigError
from central_sync.supervision_settings import EscalationSettings, SupervisionSettings


class WebSettings(BaseModel):
    """``[web]``: the command-centre dashboard served beside ingest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="Serve the web app from `kentongan-central run`.")
    host: str = Field("127.0.0.1", min_length=1, description="Listen address.")
    port: int = Field(8080, ge=0, le=65535, description="Listen port (0 = any free port: see "
                      "ready_file). Ignored when the socket is passed by socket activation.")
    ready_file: str | None = Field(None, description="Once listening, write {\"host\", \"port\", "
                                   "\"pid\"} (JSON) here: how a starter learns the port of port = 0 "
                                   "(central_sync/web_listen.py).")
    cookie_secure: bool = Field(False, description="Secure flag on the session cookie (set it "
                                "whenever the app is reached over TLS).")
    session_hours: float = Field(12.0, gt=0, le=24 * 30, description="Session lifetime.")
    login_limit: int = Field(5, ge=1, le=1000, description="Failed logins of one user name "
                             "from one address before each further attempt waits 1, 2, 4... "
                             "seconds (429 with Retry-After meanwhile).")
    login_window_s: float = Field(300.0, gt=0, description="Cap of that growing delay, and the "
                                  "window of login_address_limit.")
    login_address_limit: int = Field(50, ge=1, le=100_000, description="Failed logins from one "
                                     "address (any user names) in login_window_s, then that "
                                     "address waits. Other addresses are not affected.")
    group_window_s: float = Field(600.0, gt=0, description="Events of one post and type within "
                                  "this many seconds join one incident.")
    false_alarm_threshold: int = Field(3, ge=1, description="False alarms of one post in "
                                       "false_alarm_window_s that raise its panic hold.")
    false_alarm_window_s: float = Field(7 * 86400.0, gt=0, description="False-alarm window.")
    false_alarm_hold_seconds: float = Field(5.0, gt=0, le=30, description="Panic hold sent to "
                                            "a post past the threshold (config command).")
    rw_warning_patterns: dict[str, str] = Field(default_factory=dict, description="Warning "
                                                "pattern for the other posts of an RW, keyed "
                                                "'KELURAHAN/RW'; '*' is the default.")
    rw_warning_types: tuple[str, ...] | None = Field(None, description="Incident types that "
                                                     "warn the RW (default: crimes and types "
                                                     "whose audience includes the RW).")
    snapshot_retention_days: float = Field(30.0, gt=0, description="Snapshots are deleted "
                                           "after this many days.")
    personal_data_retention_days: float = Field(90.0, gt=0, description="Personal fields of "
                                                "event payloads (reporter, phone...) are erased "
                                                "after this many days.")
    access_log_retention_days: float = Field(365.0, gt=0, description="Access-log rows kept.")
    retention_interval_s: float = Field(3600.0, gt=0, description="How often retention runs.")
    command_ttl_s: float = Field(300.0, gt=0, description="Lifetime of commands sent from "
                                 "the dashboard.")
    cap_sender: str = Field("kentongan-central@localhost", pattern=r"^[^\s,&<]+$",
                            description="CAP <sender>.")
    cap_exercise: bool = Field(False, description="Mark CAP messages status Exercise.")
    cap_expires_hours: float = Field(6.0, gt=0, description="CAP <expires> after <sent>.")
    unseal_key_file: str | None = Field(None, description="Central's X25519 private key for "
                                        "sealed snapshots; without it they are not shown.")

    # -- desk presentation (issue 11) ----------------------------------------------------
    language: str = Field("id", pattern=r"^(id|en)$", description="Default language of the "
                          "desk (each user may switch; Bahasa Indonesia unless set).")
    timezone: str = Field("Asia/Jakarta", min_length=1, description="IANA zone the desk shows "
                          "times in; labelled WIB / WITA / WIT for Indonesia's zones.")
    response_target_s: dict[int, float] = Field(
        default_factory=lambda: {1: 120.0, 2: 600.0, 3: 1800.0, 4: 3600.0},
        description="Seconds within which a new incident of each priority should be "
                    "acknowledged; the queue shows each incident's age against it.")
    places_file: str | None = Field(None, description="CSV of kelurahan names and centroids "
                                    "(code,name,kecamatan_code,kecamatan,lat,lon); default: "
                                    "the bundled Kota Semarang table.")
    map_tile_url: str | None = Field(None, description="Leaflet tile URL template such as "
                                     "https://tile.example/{z}/{x}/{y}.png; without it the map "
                                     "is a plain background with markers and a list.")
    map_attribution: str = Field("", max_length=300, description="Attribution shown for the "
                                 "tiles.")
    release_dir: str | None = Field(None, description="Release directory of `kentongan-central "
                                    "release` (holding rollout.db); the post overview then shows "
                                    "each post's update state and a halted rollout. Without it, "
                                    "or without rollout.db, nothing extra is shown.")
    supervision: SupervisionSettings = Field(default_factory=SupervisionSettings, description="Post "
                                             "supervision (central_sync.supervision_settings).")
    escalation: EscalationSettings = Field(default_factory=EscalationSettings, description="P1 "
                                           "escalation to a supervisor (central_sync.escalation).")
    stream_replay: int = Field(1024, ge=16, le=100_000, description="Changes kept in memory "
                               "to replay to a reconnecting browser (Last-Event-ID).")

    @classmethod
    def from_config(cls, cfg: Any) -> WebSettings:
        """From ``cfg.web`` (a WebSettings, a dict or absent) or a whole config dict."""
        section: Any = cfg.get("web") if isinstance(cfg, dict) else getattr(cfg, "web", None)
        if section is None:
            return cls()
        if isinstance(section, WebSettings):
            return section
        try:
            return cls.model_validate(section)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            raise CentralConfigError(msg, f"web.{where}" if where else "web") from None
