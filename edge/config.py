"""Typed node configuration (TOML file -> pydantic models with ``extra="forbid"``).

Every field carries a description; ``firmware_config/schema/node-config.schema.json`` is generated
from these models (``python -m edge.config --schema``) and a test fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from datetime import time as dtime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge.config_io import check_path_value, errors_of, read_toml, resolve_paths
from edge.errors import ConfigError, PatternError
from edge.incidents import INCIDENTS, IncidentType, Priority
from edge.patterns import Pattern, PatternTiming, parse_pattern

GpioPin = Annotated[int, Field(ge=0, le=27, description="BCM GPIO number (0-27).")]
NODE_ID_RE = r"^[a-z0-9][a-z0-9-]{2,62}$"


class Strict(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _usable_paths(cls, value: Any) -> Any:
        return check_path_value(value)


class NodeIdentity(Strict):
    """Who this post is. RW/RT have no official code, so an RT is (kelurahan code, RW, RT)."""

    node_id: str = Field(pattern=NODE_ID_RE, description="Stable node id, also the MQTT identity "
                         "and certificate CN (lowercase letters, digits, '-').")
    kelurahan_code: str = Field(pattern=r"^\d{2}\.\d{2}\.\d{2}\.[12]\d{3}$",
                                description="Kemendagri kelurahan/desa code PP.KK.CC.DDDD "
                                "(last part starts with 1 for a kelurahan, 2 for a desa).")
    rw: int = Field(ge=1, le=999, description="RW number.")
    rt: int = Field(ge=1, le=999, description="RT number.")
    display_name: str = Field(min_length=1, max_length=120, description="Name shown to staff, "
                              "e.g. 'Pos Ronda RT 03 RW 05 Tembalang'.")
    latitude: float | None = Field(None, ge=-90, le=90, description="Optional latitude (WGS84).")
    longitude: float | None = Field(None, ge=-180, le=180, description="Optional longitude (WGS84).")


class ButtonConfig(Strict):
    """One hardware button wired to a GPIO pin."""

    name: str = Field(pattern=r"^[a-z0-9_-]{1,32}$", description="Button name used in logs, events "
                      "and 'kentongan-edge sim press NAME'.")
    pin: GpioPin
    incident: IncidentType = Field(description="Incident type this button raises.")
    hold_seconds: float = Field(2.0, ge=0, le=30, description="How long the button must be held "
                                "to trigger (0 = on press). Default 2 s against accidental touches.")
    press_count: int = Field(1, ge=1, le=10, description="Presses needed within press_window_seconds "
                             "to trigger (e.g. 3 taps). With hold_seconds > 0 only the last press "
                             "must be held.")
    press_window_seconds: float = Field(3.0, gt=0, le=30, description="Window for press_count.")
    debounce_ms: int = Field(30, ge=0, le=1000, description="Edges closer than this to the previous "
                             "accepted edge are ignored (our own debounce, tested on mock pins).")
    normally_closed: bool = Field(False, description="Wired normally-closed: the loop is closed at "
                                  "rest; an open loop that stays open is a TAMPER event.")
    pull_up: bool = Field(True, description="Use the internal pull-up (button connects pin to GND).")
    tamper_after_seconds: float = Field(10.0, gt=0, le=3600, description="For normally-closed "
                                        "buttons: an open loop longer than this is reported as "
                                        "TAMPER instead of an alarm.")
    patrol_checkin: bool = Field(False, description="A short press (shorter than hold_seconds) logs "
                                 "a PATROLI check-in instead of being ignored.")
    silent_after_days: float = Field(14.0, gt=0, description="Report BUTTON_SILENT when the button "
                                     "has reported nothing for this many days.")


class QuietHours(Strict):
    """Hours in which P4 notices do not sound (they are still recorded)."""

    enabled: bool = Field(True, description="Apply quiet hours.")
    start: dtime = Field(dtime(22, 0), description="Start of quiet hours, local time (HH:MM).")
    end: dtime = Field(dtime(5, 0), description="End of quiet hours, local time (HH:MM).")
    allow_p4: bool = Field(False, description="Let P4 notices sound during quiet hours anyway.")

    def contains(self, t: dtime) -> bool:
        """True when local time ``t`` is inside quiet hours (handles windows across midnight)."""
        if not self.enabled:
            return False
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


class SirenSelfTest(Strict):
    """The siren's own tests (edge/siren_tests.py): a daily silent test reading the relay back,
    and an audible test on a set day of each month. A test never delays a real alarm."""

    silent_enabled: bool = Field(True, description="Run the silent self-test every day.")
    silent_at: dtime = Field(dtime(4, 0), description="Local time (HH:MM[:SS]) of the daily silent test.")
    feedback_pin: GpioPin | None = Field(None, description="GPIO input wired to a feedback contact "
                                         "of the siren relay (or a current sensor): it must read "
                                         "what the relay was told. Without it only the output "
                                         "pin is read back.")
    feedback_pull_up: bool = Field(False, description="Internal pull-up on the feedback input "
                                   "(the contact then pulls it low when the relay is closed); "
                                   "otherwise pull-down, the contact pulls it high.")
    pulse_ms: int = Field(0, ge=0, le=100, description="With a feedback input: close the relay "
                          "this long during the silent test (too short to sound) and check the "
                          "feedback follows; 0 checks the resting state only.")
    audible_day: int | None = Field(None, ge=1, le=28, description="Day of the month of the "
                                    "audible test (null: no audible test).")
    audible_at: dtime = Field(dtime(10, 0), description="Local time (HH:MM[:SS]) of the audible test.")
    audible_seconds: float = Field(5.0, gt=0, le=30, description="How long the audible test "
                                   "sounds.")
    audible_pattern: str = Field("1.1.1", description="Kentongan pattern of the audible test.")
    retry_minutes: float = Field(10.0, gt=0, le=1440, description="A test put off because the "
                                 "siren was sounding runs again this many minutes later.")

    @field_validator("audible_pattern")
    @classmethod
    def _audible_parses(cls, value: str) -> str:
        try:
            parse_pattern(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return value


class SirenConfig(Strict):
    """The relay-switched siren (the digital kentongan)."""

    pin: GpioPin
    active_high: bool = Field(True, description="Relay energised by a high pin.")
    max_on_seconds: float = Field(300.0, gt=0, le=3600, description="Maximum time a pattern may "
                                  "play before the siren turns itself off (default 5 minutes).")
    quiet_hours: QuietHours = Field(default_factory=QuietHours, description="Quiet hours for P4.")
    timing: PatternTiming = Field(default_factory=PatternTiming, description="Millisecond timings "
                                  "of the kentongan notation.")
    patterns: dict[IncidentType, str] = Field(default_factory=dict, description="Per-RT pattern "
                                              "overrides by incident type (kentongan notation).")
    ack_pattern: str = Field("1.1 x1", description="Played when central acknowledges an incident "
                             "(help is coming).")
    test_max_seconds: float = Field(2.0, gt=0, le=30, description="Maximum duration of a test chirp.")
    self_test: SirenSelfTest = Field(default_factory=SirenSelfTest, description="Daily silent "
                                     "test and monthly audible test.")

    @field_validator("patterns")
    @classmethod
    def _patterns_parse(cls, value: dict[IncidentType, str]) -> dict[IncidentType, str]:
        for kind, text in value.items():
            try:
                parse_pattern(text)
            except PatternError as exc:
                raise ValueError(f"{kind.value}: {exc}") from None
        return value

    @field_validator("ack_pattern")
    @classmethod
    def _ack_parses(cls, value: str) -> str:
        try:
            parse_pattern(value)
        except PatternError as exc:
            raise ValueError(str(exc)) from None
        return value

    def pattern_for(self, kind: IncidentType) -> Pattern:
        """The RT's pattern for ``kind``: its override, else the DOMAIN.md preset."""
        return parse_pattern(self.patterns.get(kind, INCIDENTS[kind].pattern))


class CameraConfig(Strict):
    """Snapshot camera."""

    backend: Literal["picamera2", "fake", "none"] = Field("fake", description="'picamera2' on a "
                                                          "Pi, 'fake' writes generated JPEGs, "
                                                          "'none' disables snapshots.")
    width: int = Field(1280, ge=64, le=4056, description="Frame width in pixels.")
    height: int = Field(720, ge=48, le=3040, description="Frame height in pixels.")
    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality (1-100).")
    frames_per_alarm: int = Field(3, ge=0, le=10, description="Snapshots taken per alarm.")
    frame_interval_ms: int = Field(500, ge=0, le=10000, description="Delay between frames.")


class SmsRecipient(Strict):
    """Someone who gets SMS fallback messages."""

    name: str = Field(min_length=1, max_length=60, description="Role or name, e.g. 'Ketua RT'.")
    number: str = Field(pattern=r"^\+?[0-9]{6,15}$", description="Phone number, E.164 preferred "
                        "(+62...).")


class ModemConfig(Strict):
    """GSM/LTE modem on a serial port (SIM800/SIM7600)."""

    enabled: bool = Field(False, description="Use the modem (SMS fallback, signal reports).")
    port: str = Field("/dev/ttyUSB2", min_length=1, description="Serial device or pyserial URL.")
    baud: Literal[9600, 19200, 38400, 57600, 115200] = Field(115200, description="Baud rate.")
    at_timeout_seconds: float = Field(2.0, gt=0, le=60, description="Timeout for one AT answer.")
    watchdog_interval_seconds: float = Field(60.0, gt=0, le=3600, description="How often the "
                                             "watchdog sends 'AT'.")
    watchdog_failures: int = Field(3, ge=1, le=20, description="Unanswered watchdog probes before "
                                   "the modem is reset.")
    reset_pin: GpioPin | None = Field(None, description="GPIO wired to the modem's reset/power "
                                      "key, if any (else a soft reset with AT+CFUN=1,1).")
    sms_recipients: list[SmsRecipient] = Field(default_factory=list, description="Who gets SMS "
                                               "fallback for unacknowledged P1 events.")


class StorageConfig(Strict):
    """Where the node keeps its state, and how much disk it may use."""

    state_dir: Path = Field(Path("/var/lib/kentongan"), description="Directory for the outbox "
                            "database, snapshots and the control socket.")
    disk_quota_mb: float = Field(2048, gt=0, description="Total disk the node may use for its "
                                 "database and snapshots.")
    snapshot_quota_mb: float = Field(1024, gt=0, description="Part of the quota snapshots may use; "
                                     "snapshots are evicted first.")
    snapshot_retention_days: float = Field(30, gt=0, le=3650, description="Snapshots older than "
                                           "this are deleted (UU PDP retention).")
    acked_retention_days: float = Field(7, ge=0, le=3650, description="Events acknowledged by "
                                        "central are pruned after this many days.")
    min_free_mb: float = Field(64, ge=0, description="Evict when the filesystem has less free "
                               "space than this.")
    reserve_mb: float = Field(4, ge=0, le=256, description="Write reserve: this much disk is "
                              "preallocated beside the outbox database and given back when the "
                              "disk is full, so P1/P2 alarms still land on disk (docs/storage.md). "
                              "0 disables it; otherwise at least 1 (it must hold a WAL "
                              "checkpoint, 1 MiB). It is extra to disk_quota_mb.")

    @model_validator(mode="after")
    def _reserve(self) -> StorageConfig:
        if 0 < self.reserve_mb < 1:
            raise ValueError("storage.reserve_mb: 0 (no reserve) or at least 1")
        return self


class TlsConfig(Strict):
    """Mutual TLS to the broker (paths on the node)."""

    ca_file: Path = Field(description="CA certificate that signed the broker's certificate.")
    cert_file: Path = Field(description="This node's client certificate (CN = node id).")
    key_file: Path = Field(description="This node's private key for TLS.")
    crl_file: Path | None = Field(None, description="Optional CRL to check the broker against.")


class SyncConfig(Strict):
    """MQTT uplink/downlink."""

    enabled: bool = Field(True, description="Sync to central at all.")
    broker_host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    broker_port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    tls: TlsConfig | None = Field(None, description="Mutual TLS settings; None for a plain "
                                  "development listener.")
    topic_prefix: str = Field("kentongan/v1", pattern=r"^[a-z0-9_/-]+$", description="Root of the "
                              "topic tree.")
    inflight_window: int = Field(3000, ge=1, le=5000, description="Events (not messages: a "
                                 "batch carries many) published but not yet acknowledged by "
                                 "central, at most.")
    ack_timeout_seconds: float = Field(30.0, gt=0, le=3600, description="An in-flight event not "
                                       "acknowledged by central within this goes back to ready.")
    heartbeat_seconds: float = Field(20.0, gt=0, le=3600, description="Heartbeat period: central "
                                     "shows a post offline after two missed heartbeats and a margin (50 s), "
                                     "so keep it under half of central's web.supervision.offline_after_s.")
    reconnect_min_seconds: float = Field(0.2, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_seconds: float = Field(30.0, gt=0, le=600, description="Cap of the jittered "
                                         "exponential reconnect delay.")
    snapshot_bytes_per_second: int = Field(256_000, ge=1000, description="Byte budget of the "
                                           "snapshot lane, so snapshots never delay events.")
    sms_fallback_seconds: float = Field(60.0, gt=0, le=3600, description="Send an SMS for a P1 "
                                        "event central has not acknowledged within this long.")
    sign_batches: bool = Field(True, description="Sign each event_batch once more as a whole, so "
                               "central checks one signature per batch (docs/protocol.md, 'One "
                               "signature per batch'). Central must be of a version that accepts "
                               "it (update central first); false: envelope signatures only.")


class SecurityConfig(Strict):
    """Keys used to sign events and to verify central's commands (installed from the bundle)."""

    node_signing_key_file: Path = Field(description="Ed25519 private key (PEM) this node signs "
                                        "its envelopes with.")
    central_command_key_file: Path = Field(description="Central's Ed25519 public key (PEM) that "
                                           "signs downlink commands.")
    central_seal_key_file: Path | None = Field(None, description="Central's X25519 public key "
                                               "(PEM) snapshots are sealed to at rest.")
    require_signed_commands: bool = Field(True, description="Reject unsigned commands.")
    command_max_age_seconds: float = Field(300.0, gt=0, le=86400, description="Replay window: "
                                           "commands issued longer ago than this are rejected.")


class NodeConfig(Strict):
    """Complete configuration of one RT post."""

    config_version: Literal[1] = Field(1, description="Version of this file format.")
    node: NodeIdentity = Field(description="Identity and location of the post.")
    buttons: list[ButtonConfig] = Field(default_factory=list, description="Hardware buttons.")
    siren: SirenConfig = Field(description="The siren relay and its patterns.")
    camera: CameraConfig = Field(default_factory=CameraConfig, description="Snapshot camera.")
    modem: ModemConfig = Field(default_factory=ModemConfig, description="GSM/LTE modem.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="State and quotas.")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="MQTT sync to central.")
    security: SecurityConfig | None = Field(None, description="Signing/verification keys; None "
                                            "only on development nodes.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @model_validator(mode="after")
    def _cross_checks(self) -> NodeConfig:
        seen_names: dict[str, int] = {}
        pins: dict[int, str] = {self.siren.pin: "siren.pin"}
        feedback = self.siren.self_test.feedback_pin
        if feedback is not None:
            if feedback in pins:
                raise ValueError(f"siren.self_test.feedback_pin: GPIO {feedback} is already used "
                                 f"by {pins[feedback]}")
            pins[feedback] = "siren.self_test.feedback_pin"
        if self.modem.reset_pin is not None:
            if self.modem.reset_pin in pins:
                raise ValueError(f"modem.reset_pin: GPIO {self.modem.reset_pin} is already used "
                                 f"by {pins[self.modem.reset_pin]}")
            pins[self.modem.reset_pin] = "modem.reset_pin"
        for i, b in enumerate(self.buttons):
            if b.name in seen_names:
                raise ValueError(f"buttons.{i}.name: duplicate button name {b.name!r} "
                                 f"(also buttons.{seen_names[b.name]})")
            seen_names[b.name] = i
            if b.pin in pins:
                raise ValueError(f"buttons.{i}.pin: GPIO {b.pin} is already used by {pins[b.pin]}")
            pins[b.pin] = f"buttons.{i}.pin"
        if self.storage.snapshot_quota_mb > self.storage.disk_quota_mb:
            raise ValueError("storage.snapshot_quota_mb: larger than storage.disk_quota_mb")
        if self.sync.reconnect_min_seconds > self.sync.reconnect_max_seconds:
            raise ValueError("sync.reconnect_min_seconds: larger than sync.reconnect_max_seconds")
        return self

    def priority_for(self, kind: IncidentType) -> Priority:
        return INCIDENTS[kind].priority

    def button(self, name: str) -> ButtonConfig:
        for b in self.buttons:
            if b.name == name:
                return b
        raise KeyError(name)


def parse_config(data: dict[str, Any]) -> NodeConfig:
    """Validate a config mapping; raise ``ConfigError`` naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a table of keys", "<root>")
    try:
        return NodeConfig.model_validate(data)
    except ValidationError as exc:
        key, reason = errors_of(exc)[0]
        raise ConfigError(reason, key) from None
    except RecursionError:
        raise ConfigError("nested too deeply", "<root>") from None


def config_errors(data: dict[str, Any]) -> list[ConfigError]:
    """All problems in a config mapping (empty when valid)."""
    if not isinstance(data, dict):
        return [ConfigError("the config must be a table of keys", "<root>")]
    try:
        NodeConfig.model_validate(data)
    except ValidationError as exc:
        return [ConfigError(reason, key) for key, reason in errors_of(exc)]
    except RecursionError:
        return [ConfigError("nested too deeply", "<root>")]
    return []


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into a mapping; ``ConfigError`` on unreadable or malformed files."""
    return read_toml(path, ConfigError)


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; relative paths in it are resolved against the
    file's directory."""
    return resolve_paths(parse_config(read_config_file(path)), Path(path).resolve().parent)


def check_state_dir(cfg: NodeConfig) -> Path:
    """``storage.state_dir`` if it is a directory or can still be created; else ``ConfigError``
    naming the key (for commands that use it: run, status, selftest)."""
    state = Path(cfg.storage.state_dir)
    for parent in [state, *state.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                what = "is not a directory" if parent == state else f"{parent} is not a directory"
                raise ConfigError(f"{state}: {what}", "storage.state_dir")
            break
    return state


def json_schema() -> dict[str, Any]:
    schema = NodeConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://kentongan.example/schema/node-config.schema.json"
    return schema


SCHEMA_PATH = Path(__file__).resolve().parent.parent / "firmware_config" / "schema" / \
    "node-config.schema.json"


def render_schema() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True, default=str) + "\n"


if __name__ == "__main__":  # pragma: no cover - developer tool
    if "--schema" in sys.argv:
        SCHEMA_PATH.write_text(render_schema())
        print(f"wrote {SCHEMA_PATH}")
