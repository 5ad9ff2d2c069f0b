"""Receipts: the handle ``Outbox.submit`` returns, resolved by the writer after ``COMMIT``.

Not ``concurrent.futures.Future``: a ``Future`` costs a ``Condition`` + lock per event and wakes
its waiter per event; a ``Receipt`` is a ``__slots__`` object with the same duck-typed API
(``result``/``exception``/``done``/``add_done_callback``/``cancelled``). Waiters block on one
``threading.Event`` per committed batch, created only when someone actually waits (``Hub``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from edge.outbox.records import EventDraft, StoredEvent

__all__ = ["Hub", "Pending", "Receipt", "resolve"]

log = logging.getLogger("edge.outbox")

_T = TypeVar("_T")
_PENDING, _OK, _FAILED = 0, 1, 2


class Hub:
    """Per-outbox completion signal shared by all its receipts.

    ``lock`` orders "writer marks a batch done" against "a waiter decides to sleep" and "a
    callback is registered", so neither a wake-up nor a callback can be lost. ``wake`` is the
    ``threading.Event`` the current waiters sleep on: created by the first waiter, swapped out and
    set by the writer after it resolved a batch. So at most one Event per committed batch, none
    when nobody waits, and no lock or Condition per receipt."""

    __slots__ = ("lock", "wake")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wake: threading.Event | None = None


class Receipt(Generic[_T]):
    """Handle for one submitted event, resolved by the writer thread after ``COMMIT``.

    Duck-type compatible with ``concurrent.futures.Future`` for what the node uses:
    ``result(timeout)``, ``exception(timeout)``, ``done()``, ``add_done_callback(fn)`` (``fn(receipt)``
    runs on the writer thread after the commit, or at once if already resolved),
    ``cancelled()``/``cancel()`` (receipts cannot be cancelled: the event may already be on disk).
    Timeouts raise ``TimeoutError`` (== ``concurrent.futures.TimeoutError``). Also the writer's
    work item: it carries the draft and its submit-time clock readings."""

    __slots__ = ("_callbacks", "_draft", "_hub", "_mono", "_quality", "_state", "_value", "_wall")

    def __init__(self, draft: EventDraft, wall: float, quality: str, mono: int,
                 hub: Hub) -> None:
        self._draft = draft
        self._wall = wall
        self._quality = quality
        self._mono = mono
        self._hub = hub
        self._state = _PENDING
        self._value: Any = None
        self._callbacks: list[Callable[[Receipt[_T]], object]] | None = None

    def __repr__(self) -> str:
        state = ("pending", "done", "failed")[self._state]
        return f"<Receipt {self._draft.type} {state}>"

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def running(self) -> bool:
        return self._state == _PENDING

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        hub = self._hub
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with hub.lock:
                if self._state != _PENDING:
                    return
                ev = hub.wake
                if ev is None:
                    ev = hub.wake = threading.Event()
            if deadline is None:
                ev.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0 or not ev.wait(left):
                    if self._state != _PENDING:
                        return
                    raise TimeoutError(f"event not committed within {timeout}s")

    def result(self, timeout: float | None = None) -> _T:
        """The committed value; raises the storage error, or ``TimeoutError``."""
        if self._state == _PENDING:
            self._wait(timeout)
        if self._state == _FAILED:
            raise self._value
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The storage error (``None`` when committed); raises ``TimeoutError``."""
        if self._state == _PENDING:
            self._wait(timeout)
        return self._value if self._state == _FAILED else None

    def add_done_callback(self, fn: Callable[[Receipt[_T]], object]) -> None:
        """Call ``fn(self)`` once resolved: from the writer thread after the commit, or right
        here when already resolved. Exceptions from ``fn`` are logged, not raised."""
        if self._state == _PENDING:
            with self._hub.lock:
                if self._state == _PENDING:
                    if self._callbacks is None:
                        self._callbacks = [fn]
                    else:
                        self._callbacks.append(fn)
                    return
        _run_callback(fn, self)


def _run_callback(fn: Callable[[Any], object], receipt: Receipt[Any]) -> None:
    try:
        fn(receipt)
    except Exception:
        log.exception("outbox_receipt_callback_failed")


def resolve(batch: Sequence[Receipt[StoredEvent]], values: Sequence[Any] | None,
             error: BaseException | None = None) -> None:
    """Resolve ``batch`` (with ``values``, or all with ``error``), wake its waiters once, then
    run its callbacks, on the calling (writer) thread."""
    if not batch:
        return
    hub = batch[0]._hub
    with_callbacks: list[Receipt[StoredEvent]] = []
    with hub.lock:
        if values is None:
            for r in batch:
                r._value = error
                r._state = _FAILED
                if r._callbacks is not None:
                    with_callbacks.append(r)
        else:
            for r, v in zip(batch, values, strict=True):
                r._value = v
                r._state = _OK
                if r._callbacks is not None:
                    with_callbacks.append(r)
        wake, hub.wake = hub.wake, None
    if wake is not None:
        wake.set()
    for r in with_callbacks:
        cbs, r._callbacks = r._callbacks, None
        for fn in cbs or ():
            _run_callback(fn, r)




Pending = Receipt[StoredEvent]  # submitted receipts double as the writer's work items
