"""SIGINT/SIGTERM at safe points only.

A Python signal handler runs between bytecodes, so it may run inside a ctypes callback that
libbpf is executing (ring buffer samples, libbpf's print callback); an exception raised there is
swallowed by ctypes and libbpf sees a garbage return code. Inside `deferred()` a signal is only
recorded; it takes effect when the block ends (or at an explicit `check()`), never mid-call.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .errors import Interrupted

__all__ = ["deferred", "check", "as_errors", "SIGNALS"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_depth = 0
_pending: int | None = None
_saved: dict[int, Any] = {}


def _record(signum: int, _frame: FrameType | None) -> None:
    global _pending
    _pending = _pending or signum


def _main_thread() -> bool:
    # Python runs signal handlers in the main thread only: other threads need no deferral.
    return threading.current_thread() is threading.main_thread()


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the block; a held signal is re-delivered when the block ends."""
    global _depth, _pending
    if not _main_thread():
        yield
        return
    if _depth == 0:
        # A signal the caller ignores (nohup, a background job) stays ignored.
        _saved.update({s: signal.signal(s, _record) for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN})
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:
            for s, handler in _saved.items():
                signal.signal(s, handler)
            _saved.clear()
            held, _pending = _pending, None
            if held:
                signal.raise_signal(held)  # now the caller's own handler acts, outside any C call


def check() -> None:
    """A safe point inside `deferred()`: raise Interrupted for a held signal."""
    global _pending
    held, _pending = _pending, None
    if held:
        raise Interrupted(held)


def _raise(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def as_errors() -> Iterator[None]:
    """For a CLI command (its output included): SIGINT/SIGTERM raise Interrupted (exit 130/143)
    instead of KeyboardInterrupt or dying mid-write. Afterwards the process only exits, and a
    late signal is ignored: it can no longer stop anything, only turn a finished command's exit
    status into a death by signal (Python restores SIG_DFL for its own handlers at shutdown)."""
    wanted = [s for s in SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
    for s in wanted:
        signal.signal(s, _raise)
    try:
        yield
        sys.stdout.flush()  # nothing left that could block once signals are ignored
    finally:
        for s in wanted:
            signal.signal(s, signal.SIG_IGN)
