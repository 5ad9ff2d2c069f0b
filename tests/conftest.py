"""Shared fixtures: MockFactory pins (gpiozero's own), temp state dirs, a real Mosquitto."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory, MockPWMPin

from central_sync.broker import LocalMosquitto
from central_sync.store import CentralStore, Store

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


@pytest.fixture(params=["sqlite"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The store contract fixture: every backend, fresh and empty."""
    store: Store = CentralStore(tmp_path / "central.db")
    try:
        yield store
    finally:
        store.close()
