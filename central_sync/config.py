"""Typed configuration of central (TOML file -> pydantic models with ``extra="forbid"``).

Every section except the store (``database`` or ``[store] url``) has defaults, so a minimal
file is one line. Other central
modules add their own optional section by adding one field to ``CentralConfig`` (for example
``web`` or ``pki``); a section they do not need stays absent. Every relative path in the file
(``database``, a ``sqlite:///`` store URL, ``broker.tls.*``, ``pki.dir``,
``web.unseal_key_file``...) is resolved against the directory of the config file, never the
working directory (``edge.config_io.resolve_paths``).

Errors name the bad key, exactly like ``edge.config``: ``CentralConfigError("unknown key",
"ingest.batch_maxx")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from central_sync.errors import CentralConfigError
from central_sync.maintenance_settings import MaintenanceSettings
from central_sync.web_settings import WebSettings
from edge.config_io import check_path_value, errors_of, read_toml, resolve_paths


class Strict(BaseModel):
    """Base of every central config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="after")
    @classmethod
    def _usable_paths(cls, value: Any) -> Any:
        return check_path_value(value)


class BrokerTls(Strict):
    """Mutual TLS from central to the broker."""

    ca_file: Path = Field(description="CA certificate that signed the broker's certificate.")
    cert_file: Path | None = Field(None, description="Central's client certificate (CN 'central').")
    key_file: Path | None = Field(None, description="Private key of cert_file.")

    @model_validator(mode="after")
    def _pair(self) -> BrokerTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("broker.tls.cert_file: cert_file and key_file must be given together")
        return self


class BrokerConfig(Strict):
    """The MQTT broker central subscribes to (MQTT 5, persistent session)."""

    host: str = Field("127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    tls: BrokerTls | None = Field(None, description="Mutual TLS settings; None for a plain "
                                  "development listener.")
    client_id: str = Field("central", pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="Fixed MQTT "
                           "client id: the broker keeps central's persistent session under it. "
                           "With several workers each gets '<client_id>-w<N>'.")
    username: str | None = Field(None, max_length=120, description="Optional MQTT username.")
    password: str | None = Field(None, max_length=500, description="Optional MQTT password.")
    keepalive: int = Field(30, ge=5, le=3600, description="MQTT keepalive in seconds.")
    session_expiry_seconds: int = Field(14 * 86400, ge=1, le=0xFFFFFFFF, description="How long "
                                        "the broker keeps central's session (and queues messages "
                                        "for it) while central is down.")
    reconnect_min_seconds: float = Field(0.2, gt=0, le=60, description="First reconnect delay.")
    reconnect_max_seconds: float = Field(15.0, gt=0, le=600, description="Cap of the jittered "
                                         "exponential reconnect delay.")

    @model_validator(mode="after")
    def _backoff(self) -> BrokerConfig:
        if self.reconnect_min_seconds > self.reconnect_max_seconds:
            raise ValueError("broker.reconnect_min_seconds: larger than broker.reconnect_max_seconds")
        return self


class IngestConfig(Strict):
    """How central batches, commits and acknowledges uplink messages."""

    batch_max: int = Field(500, ge=1, le=5000, description="Most events committed in one "
                           "transaction (and acknowledged in one Ack per node).")
    batch_wait_ms: int = Field(20, ge=0, le=10_000, description="How long a batch waits for more "
                               "events before it is committed.")
    linger_ms: int = Field(0, ge=0, le=10_000, description="Group commit: a batch still smaller "
                           "than linger_events once batch_wait_ms has passed keeps waiting until "
                           "its oldest event has waited this long (0, the default: off). Fewer, "
                           "bigger transactions at moderate rates (one fsync, one thread hop and "
                           "one Ack flush for more events: -12 % CPU per event at 500 ev/s) for "
                           "up to this much more Ack latency (at 10,000 posts and 1,000 ev/s the "
                           "Ack p99 rose from 236 to 293 ms with 50); a batch holding a P1 event "
                           "is never held (central_sync.ingest_batcher, docs/scale.md).")
    linger_events: int = Field(64, ge=1, le=5000, description="Events that end a linger "
                               "(linger_ms) at once: a batch this big is committed without "
                               "waiting longer.")
    shared_group: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="MQTT 5 "
                                     "shared subscription group: subscribe to "
                                     "'$share/<group>/...' so several workers split the load. "
                                     "None = one ordinary subscriber.")
    workers: int = Field(1, ge=1, le=32, description="MQTT connections this process runs (more "
                         "than 1 needs shared_group).")
    max_inflight: int = Field(1000, ge=1, le=65535, description="QoS 1 messages in flight from "
                              "the broker to central (MQTT 5 receive maximum).")
    max_pending_events: int = Field(10_000, ge=1, description="Decoded events waiting for a "
                                    "commit before ingest stops reading the broker socket "
                                    "(backpressure; the rest waits in the broker session).")
    pending_calls_threshold: int = Field(100_000, ge=10, description="aiomqtt warns past this "
                                         "many pending calls; raised so bulk acks do not log.")
    db_retry_max_seconds: float = Field(30.0, gt=0, le=3600, description="Cap of the backoff "
                                        "when the database is locked or busy.")
    max_buffered_messages: int = Field(2000, ge=10, description="Received messages waiting to be "
                                       "decoded before ingest stops reading the broker socket.")
    ack_window: int = Field(100, ge=1, le=65535, description="QoS 1 Acks not yet confirmed by the "
                            "broker; past it Acks go at QoS 0 (a lost one only makes the post "
                            "resend). Small on purpose: paho reads as many packets per call as it "
                            "has messages in flight, which is how far ingest can overshoot its "
                            "read limits.")
    max_buffered_bytes: int = Field(8 * 1024 * 1024, ge=65536, description="Payload bytes of the "
                                    "received messages waiting to be decoded before ingest "
                                    "stops reading the broker socket.")
    max_queued_qos0: int = Field(5000, ge=100, description="QoS 0 messages (heartbeats) buffered "
                                 "while ingest is busy; more are dropped and counted (QoS 1 ones "
                                 "are held back by the broker instead: manual PUBACKs).")
    shared_session_expiry_seconds: int = Field(60, ge=1, le=0xFFFFFFFF, description="Broker "
                                               "session expiry of a shared-group member: after it, "
                                               "a dead worker's share goes to the living ones.")
    rejection_interval_s: float = Field(5.0, gt=0, le=3600, description="Rejected messages are "
                                        "counted per node and written (and logged) as one "
                                        "summary per node per interval.")
    flood_threshold: int = Field(1000, ge=1, description="Rejected messages of one node within "
                                 "one interval that flag it as flooding.")
    reject_burst: int = Field(200, ge=1, description="Rejections one node may cause at once; "
                              "past them (and until its budget refills) its messages are shed: "
                              "counted as 'shed' but not decoded nor verified. A post sending "
                              "valid messages is never rejected, so never shed "
                              "(central_sync/reject_budget.py).")
    reject_rate_per_s: float = Field(20.0, gt=0, description="Rate at which a node's rejection "
                                     "budget (reject_burst) refills, per second.")
    p1_lane: bool = Field(True, description="Consume the P1 channel ({prefix}/up/+/event/p1) on a "
                          "separate connection with its own queue and commits, so alarms are "
                          "acknowledged ahead of any backlog (central_sync.ingest_p1).")
    p1_max_pending: int = Field(2000, ge=10, description="P1 envelopes (and messages) waiting for "
                                "the P1 lane's commit before it stops reading its socket.")

    @model_validator(mode="after")
    def _workers(self) -> IngestConfig:
        if self.workers > 1 and self.shared_group is None:
            raise ValueError("ingest.workers: more than one worker needs ingest.shared_group")
        return self


class PkiConfig(Strict):
    """Central's certificate authority (central_sync.pki; docs/security.md)."""

    dir: Path = Field(description="Directory of the CA files and keys (relative: to the config "
                      "file).")
    broker_hosts: list[str] = Field(default_factory=lambda: ["localhost"], min_length=1,
                                    description="Host names/addresses in the broker certificate; "
                                    "the first is written into node configs.")
    broker_port: int = Field(8883, ge=1, le=65535, description="TLS port nodes connect to.")
    ca_days: int = Field(3650, ge=1, description="CA certificate validity.")
    server_days: int = Field(825, ge=1, description="Broker and central certificate validity.")
    node_days: int = Field(730, ge=1, description="Node certificate validity.")
    crl_days: int = Field(365, ge=1, description="CRL validity: regenerate before it runs out.")
    renew_before_days: int = Field(60, ge=1, description="'renew --due' picks certificates "
                                   "ending within this many days.")
    org: str = Field("Kentongan", min_length=1, max_length=64, description="Organisation name in "
                     "the CA certificate.")
    broker_crl_file: Path | None = Field(None, description="The broker's crlfile, when the broker "
                                         "runs on this host (production: "
                                         "/etc/mosquitto/kentongan/crl.pem). 'revoke', 'enrol "
                                         "--replace' and 'ca crl' then install every new CRL there "
                                         "at once, and kentongan-broker-crl.path reloads Mosquitto "
                                         "(SIGHUP re-reads crlfile): a revoked post's next TLS "
                                         "handshake fails with no hand work. Relative: to the "
                                         "config file.")
    accept_unsigned_status: bool = Field(False, description="Transition only, while posts older "
                                         "than protocol 'all kinds signed' are updated: accept "
                                         "UNSIGNED snapshots, presence, heartbeats and command "
                                         "results from enrolled nodes. Unknown and revoked nodes "
                                         "are dropped regardless, a present signature is always "
                                         "checked, events must always be signed "
                                         "(docs/protocol.md, 'Signatures').")


class StoreConfig(Strict):
    """Where central keeps its data (docs/central-store.md)."""

    url: str = Field(min_length=8, max_length=1000, description="Store URL: 'sqlite:///central.db' "
                     "(relative to the config file; 'sqlite:////abs/path.db' for an absolute path) or "
                     "'postgresql://user@host:5432/kentongan' (PostgreSQL 15+; password from "
                     "~/.pgpass or PGPASSWORD, not from this file).")
    pool_size: int = Field(8, ge=1, le=200, description="Most PostgreSQL connections one process "
                           "opens (ignored for SQLite).")

    @model_validator(mode="after")
    def _scheme(self) -> StoreConfig:
        if not self.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError("store.url: must start with sqlite:///, postgresql:// or postgres://")
        return self


class CentralConfig(Strict):
    """Complete configuration of central."""

    config_version: Literal[1] = Field(1, description="Version of this file format.")
    database: Path | None = Field(None, description="Central's SQLite database file (shorthand for "
                                  "[store] url = 'sqlite:///<file>'; give one of the two).")
    store: StoreConfig | None = Field(None, description="Central's store; absent = the SQLite file "
                                      "named by 'database'.")
    topic_prefix: str = Field("kentongan/v1", pattern=r"^[a-z0-9_/-]+$", description="Root of the "
                              "topic tree (must match the nodes').")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="MQTT broker.")
    ingest: IngestConfig = Field(default_factory=IngestConfig, description="Batching and "
                                 "acknowledgement.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    web: WebSettings | None = Field(None, description="Command-centre web app "
                                    "(central_sync.web_settings); absent = not served.")
    pki: PkiConfig | None = Field(None, description="Certificate authority for enrolment "
                                  "(kentongan-central ca/enrol/revoke/renew); absent = no CA here.")
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings, description="Store "
                                             "maintenance (kentongan-central store maintain): "
                                             "event and audit-log retention, PostgreSQL month "
                                             "partitions (central_sync.maintenance_settings).")

    @model_validator(mode="after")
    def _one_store(self) -> CentralConfig:
        if (self.database is None) == (self.store is None):
            raise ValueError("store.url: give [store] url = ... or the SQLite shorthand database = ... (one)")
        return self

    @property
    def store_url(self) -> str:
        """The store URL, whichever way the file gave it (relative SQLite paths already resolved)."""
        if self.store is not None:
            return self.store.url
        return f"sqlite:///{self.database}"

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite file when central runs on SQLite (None on PostgreSQL)."""
        if self.store is None:
            return self.database
        url = self.store.url
        return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def _resolve_store_url(cfg: CentralConfig, base: Path) -> CentralConfig:
    """``[store] url = "sqlite:///relative.db"``: relative to the config file, like every path."""
    if cfg.store is None or not cfg.store.url.startswith("sqlite:///"):
        return cfg
    rest = cfg.store.url[len("sqlite:///"):]
    if not rest or Path(rest).is_absolute():
        return cfg
    store = cfg.store.model_copy(update={"url": f"sqlite:///{base / rest}"})
    return cfg.model_copy(update={"store": store})


def parse_central_config(data: dict[str, Any], base_dir: Path | None = None) -> CentralConfig:
    """Validate a config mapping; raise ``CentralConfigError`` naming the first bad key."""
    try:
        cfg = CentralConfig.model_validate(data)
    except ValidationError as exc:
        key, reason = errors_of(exc)[0]
        raise CentralConfigError(reason, key) from None
    except RecursionError:
        raise CentralConfigError("nested too deeply", "<root>") from None
    return cfg if base_dir is None else _resolve_store_url(resolve_paths(cfg, base_dir), base_dir)


def load_central_config(path: str | Path) -> CentralConfig:
    """Read and validate central's TOML config file."""
    p = Path(path)
    data = read_toml(p, CentralConfigError)
    return parse_central_config(data, base_dir=p.resolve().parent)
