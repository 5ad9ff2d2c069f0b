"""Settings of the store's maintenance (``kentongan-central store maintain``, run by
``systemd/kentongan-store-maintain.timer``): the ``[maintenance]`` section of central's config,
every key optional. See docs/central-store.md, *Retention of events and the audit log*."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class MaintenanceSettings(BaseModel):
    """``[maintenance]``: event and audit-log retention, PostgreSQL month partitions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_retention_days: float = Field(730.0, ge=31, le=36500, description="Events received "
                                        "(central's clock) more than this many days ago are "
                                        "deleted, with their de-duplication keys. PostgreSQL "
                                        "drops whole months: a month goes once its last day is "
                                        "older than this. Events of open incidents, and of "
                                        "incidents closed less than evidence_hold_days ago, are "
                                        "kept.")
    evidence_hold_days: float = Field(365.0, ge=0, le=36500, description="Events of an incident "
                                      "stay this many days after the incident is closed "
                                      "(resolved or false alarm), whatever event_retention_days "
                                      "says: the record a report to the police may cite. Events "
                                      "of an open incident are never deleted.")
    audit_log_retention_days: float = Field(730.0, ge=30, le=36500, description="Rows of the "
                                            "administrative audit log (who changed accounts, sent "
                                            "commands, enrolled or revoked posts, from which "
                                            "address: personal data under UU PDP) older than "
                                            "this are deleted.")
    partitions_ahead: int = Field(2, ge=1, le=24, description="PostgreSQL: month partitions of "
                                  "'events' created ahead of the current month, so no insert "
                                  "has to create one at a month's rollover (ignored on SQLite).")
    chunk_rows: int = Field(500, ge=10, le=100_000, description="Most rows one deletion "
                            "transaction removes: each chunk is a short transaction, so ingest "
                            "never waits long for the write lock.")
    chunk_pause_ms: int = Field(20, ge=0, le=10_000, description="Pause between two deletion "
                                "chunks (the write lock is free meanwhile).")
    lock_timeout_s: float = Field(5.0, gt=0, le=300, description="PostgreSQL: how long detaching "
                                  "an old month partition may wait for its lock; past it the "
                                  "month is left for the next run instead of stalling ingest "
                                  "behind a waiting lock.")
