"""Structured logging: one JSON object per line, always with the node id.

Log records are handed to a ``QueueHandler`` so that a caller on the alarm path never waits on the
terminal, the journal or a disk: a background ``QueueListener`` does the writing.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
import sys
import threading
import time
from typing import Any

_NODE_ID = "-"
_listener: logging.handlers.QueueListener | None = None

_STD_ATTRS = frozenset(
    vars(logging.LogRecord("x", 0, "x", 0, "x", None, None)).keys() | {"message", "asctime"}
)


def set_node_id(node_id: str) -> None:
    """Set the node id stamped on every record of this process."""
    global _NODE_ID
    _NODE_ID = node_id


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line: ts, level, logger, event, node_id and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "node_id": getattr(record, "node_id", _NODE_ID),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``event`` (a short snake_case name) with structured ``fields``."""
    if logger.isEnabledFor(level):
        logger.log(level, event, extra=fields)


def setup_logging(level: str = "INFO", stream: Any = None) -> None:
    """Send all logging as JSON lines to ``stream`` (stderr) through a non-blocking queue."""
    global _listener
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if _listener is not None:
        _listener.stop()
    out = logging.StreamHandler(stream or sys.stderr)
    out.setFormatter(JsonFormatter())
    q: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    root.addHandler(logging.handlers.QueueHandler(q))
    _listener = logging.handlers.QueueListener(q, out, respect_handler_level=False)
    _listener.start()
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Flush and stop the background log writer."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def monotonic_ns() -> int:
    """Monotonic clock in nanoseconds (one place so tests can reason about it)."""
    return time.monotonic_ns()


class RateLimitedLog:
    """Log lines of one kind at most once per ``interval_s`` per key, with a summary count.

    ``log(event, level, key=..., **fields)`` writes the line when its key (default: the event
    name) was not written in the last ``interval_s`` seconds; otherwise it only counts it. The
    next line of that key that is written carries ``suppressed=N``: how many were dropped since
    the previous one, so nothing is hidden, only summarised. ``flush()`` writes a summary line
    for keys with suppressed lines (call it when the repetition is over, e.g. on recovery).
    Thread-safe. For repeating failures (a full disk, a dead device) on any thread.

    Why not a library: ``log-rate-limit`` (PyPI) filters a whole logger's stream and appends the
    count to the message text, which would break the one-JSON-object-per-line ``event`` names;
    this is 40 lines keyed by call site with the count as a structured field.
    """

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Any = time.monotonic) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._dropped: dict[str, tuple[int, str, int]] = {}  # key -> (count, event, level)
        self.written = 0
        self.suppressed_total = 0

    def log(self, event: str, level: int = logging.INFO, *, key: str | None = None,
            **fields: Any) -> bool:
        """Write or count one line; returns True when it was written."""
        k = key or event
        now = self._clock()
        with self._lock:
            last = self._last.get(k)
            if last is not None and now - last < self.interval_s:
                n = self._dropped.get(k, (0, event, level))[0]
                self._dropped[k] = (n + 1, event, level)
                self.suppressed_total += 1
                return False
            self._last[k] = now
            n = self._dropped.pop(k, (0, event, level))[0]
            self.written += 1
        if n:
            fields["suppressed"] = n
        log_event(self.logger, event, level, **fields)
        return True

    def flush(self) -> int:
        """Write one summary line per key with suppressed lines; returns how many keys."""
        with self._lock:
            dropped, self._dropped = self._dropped, {}
            self.written += len(dropped)
        for k, (n, event, level) in dropped.items():
            log_event(self.logger, event, level, suppressed=n, summary=True, key=k)
        return len(dropped)
