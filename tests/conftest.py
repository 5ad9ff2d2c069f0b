"""Shared fixtures: MockFactory pins (gpiozero's own), temp state dirs, a real Mosquitto."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin
from pg_cluster import PgCluster

from central_sync.broker import LocalMosquitto
from central_sync.store import Store, open_store
from tests.helpers_central import IngestInThread, started_central

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture
def pin_factory() -> Iterator[MockFactory]:
    """A fresh gpiozero MockFactory installed as the default pin factory."""
    factory = MockFactory(pin_class=MockPWMPin)
    saved = Device.pin_factory
    Device.pin_factory = factory
    try:
        yield factory
    finally:
        factory.reset()
        Device.pin_factory = saved


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """A real Mosquitto on a free loopback port with the project's dev config."""
    with LocalMosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def ingest_central(tmp_path: Path, mosquitto: LocalMosquitto) -> Iterator[IngestInThread]:
    """An in-process central (``IngestService`` in a loop thread) on a fresh SQLite store,
    connected to the test's Mosquitto."""
    c = started_central(tmp_path / "central.db", mosquitto.port)
    yield c
    c.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session (initdb in a temp dir, free port)."""
    cluster = PgCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """URL of a fresh, empty database in the test cluster."""
    return pg_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL of every backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture
def any_store(store_url: str) -> Iterator[Store]:
    """The store contract fixture: every backend, fresh and empty."""
    store = open_store(store_url)
    try:
        yield store
    finally:
        store.close()
