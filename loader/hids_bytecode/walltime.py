"""Kernel timestamps to wall-clock time.

The probes stamp events with bpf_ktime_get_ns() (bpf/include/hids_emit.h), which is
CLOCK_MONOTONIC. Wall time = ts + (CLOCK_REALTIME - CLOCK_MONOTONIC). The offset is measured
between two REALTIME reads bracketing one MONOTONIC read (the tightest bracket of a few tries)
and measured again every `refresh_s`, so an NTP step or a settimeofday moves it within a second;
the offset at conversion time is applied to events already buffered too, which is right: the
monotonic clock never stepped, only the mapping to civil time did. (CLOCK_MONOTONIC stops during
suspend, like the probes' clock, so no suspend correction is needed.)
"""

from __future__ import annotations

import time

__all__ = ["WallClock", "rfc3339"]

_NS = 1_000_000_000


def _offset_ns(tries: int = 5) -> int:
    best: tuple[int, int] | None = None
    for _ in range(tries):
        before = time.clock_gettime_ns(time.CLOCK_REALTIME)
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        after = time.clock_gettime_ns(time.CLOCK_REALTIME)
        span = after - before
        if best is None or span < best[0]:
            best = (span, (before + after) // 2 - mono)
    return best[1]  # type: ignore[index]


_last_second: list[object] = [None, ""]  # the last second formatted: events come in bursts of the same second


def rfc3339(wall_ns: int) -> str:
    """`2026-11-29T12:50:00.123456789Z`: RFC 3339, UTC, nanoseconds."""
    seconds, ns = divmod(wall_ns, _NS)
    if _last_second[0] != seconds:
        _last_second[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_last_second[1]}.{ns:09d}Z"


class WallClock:
    """Converts the probes' CLOCK_MONOTONIC nanoseconds to wall-clock nanoseconds."""

    def __init__(self, refresh_s: float = 1.0) -> None:
        self.refresh_ns = int(refresh_s * _NS)
        self._checked = 0
        self.offset_ns = 0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if force or now - self._checked >= self.refresh_ns:
            self.offset_ns = _offset_ns()
            self._checked = now

    def wall_ns(self, ktime_ns: int) -> int:
        return ktime_ns + self.offset_ns

    @staticmethod
    def now_ktime_ns() -> int:
        return time.clock_gettime_ns(time.CLOCK_MONOTONIC)
