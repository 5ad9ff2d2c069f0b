"""Camera drivers: the Pillow fake, the lazy picamera2 backend, and capture_burst off the loop."""

from __future__ import annotations

import asyncio
import io
import sys
import types
from typing import Any

import pytest
from PIL import Image

from edge.config import CameraConfig
from edge.drivers.camera import (
    Camera,
    FakeCamera,
    Picamera2Camera,
    capture_burst,
    make_camera,
)
from edge.errors import CameraError

SMALL = CameraConfig(backend="fake", width=320, height=240, jpeg_quality=80)


def test_fake_produces_decodable_jpeg_of_configured_size() -> None:
    cam = FakeCamera(SMALL, "33.74.01.1001-rw03-rt05")
    data = cam.capture_jpeg()
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG"
    assert img.size == (320, 240)
    img.load()  # fully decodes
    assert cam.captured == 1
    assert isinstance(cam, Camera)


def test_fake_frames_differ_and_quality_changes_size() -> None:
    lo = FakeCamera(SMALL.model_copy(update={"jpeg_quality": 10}), "n")
    hi = FakeCamera(SMALL.model_copy(update={"jpeg_quality": 95}), "n")
    assert len(lo.capture_jpeg()) < len(hi.capture_jpeg())
    assert lo.capture_jpeg() != lo.capture_jpeg()


def test_fail_next_raises_then_recovers() -> None:
    cam = FakeCamera(SMALL, "n")
    cam.fail_next(2)
    for _ in range(2):
        with pytest.raises(CameraError):
            cam.capture_jpeg()
    assert cam.capture_jpeg()[:2] == b"\xff\xd8"
    assert cam.captured == 1


def test_closed_fake_raises() -> None:
    cam = FakeCamera(SMALL, "n")
    cam.close()
    with pytest.raises(CameraError):
        cam.capture_jpeg()


def test_capture_burst_returns_errors_in_place() -> None:
    cam = FakeCamera(SMALL, "n")
    cam.fail_next(1)
    frames = asyncio.run(capture_burst(cam, 3, 0.0))
    assert len(frames) == 3
    assert isinstance(frames[0], CameraError)
    assert all(isinstance(f, bytes) and f[:2] == b"\xff\xd8" for f in frames[1:])


def test_capture_burst_wraps_unexpected_driver_exceptions() -> None:
    class Broken:
        def capture_jpeg(self) -> bytes:
            raise OSError("i2c bus gone")

        def close(self) -> None:
            pass

    frames = asyncio.run(capture_burst(Broken(), 2, 0.0))
    assert all(isinstance(f, CameraError) and "i2c bus gone" in str(f) for f in frames)


def test_capture_burst_runs_off_the_event_loop() -> None:
    cam = FakeCamera(SMALL, "n", delay_s=0.3)

    async def main() -> tuple[int, list[bytes | CameraError]]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)  # let the ticker start before the burst
        before = ticks
        frames = await capture_burst(cam, 1, 0.0)
        during = ticks - before
        stop.set()
        await task
        return during, frames

    during, frames = asyncio.run(main())
    assert isinstance(frames[0], bytes)
    # A capture blocking the loop would allow no tick at all during its 0.3 s.
    assert during >= 5


def test_picamera2_missing_raises_camera_error_with_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import picamera2 -> ImportError
    with pytest.raises(CameraError, match="python3-picamera2"):
        Picamera2Camera(CameraConfig(backend="picamera2"))
    with pytest.raises(CameraError, match="python3-picamera2"):
        make_camera(CameraConfig(backend="picamera2"), "n")


def test_picamera2_backend_configures_and_captures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a stand-in module with picamera2's call shapes (no fake exists on PyPI)."""
    calls: dict[str, Any] = {}

    class StubPicamera2:
        def __init__(self) -> None:
            self.options: dict[str, Any] = {}
            calls["cam"] = self

        def create_still_configuration(self, main: dict[str, Any]) -> dict[str, Any]:
            return {"main": main}

        def configure(self, config: dict[str, Any]) -> None:
            calls["config"] = config

        def start(self) -> None:
            calls["started"] = True

        def capture_file(self, f: io.BytesIO, format: str) -> None:
            calls["format"] = format
            if calls.get("fail"):
                raise RuntimeError("camera frontend timeout")
            f.write(b"\xff\xd8jpeg\xff\xd9")

        def stop(self) -> None:
            calls["stopped"] = True

        def close(self) -> None:
            calls["closed"] = True

    monkeypatch.setitem(sys.modules, "picamera2",
                        types.SimpleNamespace(Picamera2=StubPicamera2))
    cfg = CameraConfig(backend="picamera2", width=640, height=480, jpeg_quality=55)
    cam = make_camera(cfg, "n")
    assert isinstance(cam, Picamera2Camera)
    assert calls["config"] == {"main": {"size": (640, 480)}}
    assert calls["cam"].options["quality"] == 55
    assert cam.capture_jpeg() == b"\xff\xd8jpeg\xff\xd9"
    assert calls["format"] == "jpeg"
    calls["fail"] = True
    with pytest.raises(CameraError, match="frontend timeout"):
        cam.capture_jpeg()
    cam.close()
    assert calls["closed"]
    with pytest.raises(CameraError):
        cam.capture_jpeg()


def test_make_camera_backends() -> None:
    assert make_camera(CameraConfig(backend="none"), "n") is None
    assert isinstance(make_camera(SMALL, "n"), FakeCamera)
