"""A process's start time, the one fact of /proc/<pid>/stat both sides need: a pid names the same
process only while its start time matches, since the kernel reuses pids."""

from __future__ import annotations

__all__ = ["start_ticks"]


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    return int(stat.rsplit(b")", 1)[1].split()[19])
