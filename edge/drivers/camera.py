"""Snapshot cameras: picamera2 on a Pi, a Pillow-generated fake elsewhere.

Every backend implements ``Camera``: ``capture_jpeg()`` blocks and returns one JPEG or raises
``CameraError``. ``capture_burst`` runs captures in worker threads so the event loop (and the alarm
path on it) never waits on a sensor, and returns failed frames in place instead of raising.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from PIL import Image, ImageDraw, ImageFont

from edge.config import CameraConfig
from edge.errors import CameraError
from edge.logs import log_event

log = logging.getLogger("kentongan.camera")

PICAMERA2_HINT = "install python3-picamera2 on Raspberry Pi OS (apt install python3-picamera2)"


@runtime_checkable
class Camera(Protocol):
    """A still camera."""

    def capture_jpeg(self) -> bytes:
        """Capture one frame as JPEG bytes (blocking); raise ``CameraError`` on failure."""
        ...

    def close(self) -> None:
        """Release the device."""
        ...


class Picamera2Camera:
    """The Raspberry Pi camera through picamera2 (imported lazily: it only installs on a Pi)."""

    def __init__(self, cfg: CameraConfig) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise CameraError(f"picamera2 is not available ({exc}); {PICAMERA2_HINT}") from exc
        self._lock = threading.Lock()
        try:
            cam: Any = Picamera2()
            cam.configure(cam.create_still_configuration(main={"size": (cfg.width, cfg.height)}))
            cam.options["quality"] = cfg.jpeg_quality
            cam.start()
        except Exception as exc:
            raise CameraError(f"cannot start the camera: {exc}") from exc
        self._cam: Any = cam
        self._closed = False

    def capture_jpeg(self) -> bytes:
        with self._lock:
            if self._closed:
                raise CameraError("camera is closed")
            buf = io.BytesIO()
            try:
                self._cam.capture_file(buf, format="jpeg")
            except Exception as exc:
                raise CameraError(f"capture failed: {exc}") from exc
        data = buf.getvalue()
        if not data:
            raise CameraError("capture returned no data")
        return data

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._cam.stop()
                self._cam.close()
            except Exception as exc:  # closing must never take the agent down
                log_event(log, "camera_close_failed", logging.WARNING, error=str(exc))


class FakeCamera:
    """Writes real JPEGs with Pillow: a noisy frame stamped with node id, counter and time.

    Knobs for tests and the simulator: ``fail_next(n)`` (the next n captures raise ``CameraError``),
    ``delay_s`` (a slow sensor), ``captured`` (frames delivered so far).
    """

    def __init__(self, cfg: CameraConfig, node_id: str, *, delay_s: float = 0.0) -> None:
        self.width = cfg.width
        self.height = cfg.height
        self.quality = cfg.jpeg_quality
        self.node_id = node_id
        self.delay_s = delay_s
        self.captured = 0
        self._fail = 0
        self._frame = 0
        self._closed = False
        self._lock = threading.Lock()
        self._font = ImageFont.load_default(size=max(10, self.height // 18))

    def fail_next(self, n: int = 1) -> None:
        """Make the next ``n`` captures fail like a dead camera."""
        with self._lock:
            self._fail = n

    def capture_jpeg(self) -> bytes:
        with self._lock:
            if self._closed:
                raise CameraError("camera is closed")
            self._frame += 1
            frame = self._frame
            if self._fail > 0:
                self._fail -= 1
                raise CameraError("fake camera: simulated sensor failure")
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        data = self._render(frame)
        with self._lock:
            self.captured += 1
        return data

    def _render(self, frame: int) -> bytes:
        w, h = self.width, self.height
        noise = Image.effect_noise((w, h), 12)
        gradient = Image.linear_gradient("L").resize((w, h))
        img = Image.merge("RGB", (noise, gradient, Image.blend(noise, gradient, 0.5)))
        draw = ImageDraw.Draw(img)
        x = (frame * 37) % max(1, w - w // 8)
        draw.rectangle((x, h // 3, x + w // 8, h // 3 + h // 6), fill=(230, 40, 40))
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
        lines = f"KENTONGAN FAKE CAMERA\n{self.node_id}\nframe {frame}\n{stamp}"
        draw.multiline_text((8, 8), lines, fill=(255, 255, 255), font=self._font,
                            stroke_width=2, stroke_fill=(0, 0, 0))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=self.quality)
        return out.getvalue()

    def close(self) -> None:
        with self._lock:
            self._closed = True


def make_camera(cfg: CameraConfig, node_id: str) -> Camera | None:
    """Build the configured backend; ``None`` for ``backend = "none"``. May raise ``CameraError``."""
    if cfg.backend == "none":
        return None
    if cfg.backend == "fake":
        return FakeCamera(cfg, node_id)
    return Picamera2Camera(cfg)


async def capture_burst(camera: Camera, frames: int,
                        interval_s: float) -> list[bytes | CameraError]:
    """Capture ``frames`` JPEGs ``interval_s`` apart, each in a worker thread.

    A failing frame is returned in place as its ``CameraError`` (any other exception from a driver
    is wrapped in one); this coroutine never raises for a frame.
    """
    out: list[bytes | CameraError] = []
    for i in range(frames):
        if i and interval_s > 0:
            await asyncio.sleep(interval_s)
        try:
            out.append(await asyncio.to_thread(camera.capture_jpeg))
        except CameraError as exc:
            out.append(exc)
        except Exception as exc:
            out.append(CameraError(f"capture failed: {exc!r}"))
    return out
