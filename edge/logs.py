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
