"""Which process owns a temporary directory or a container, so a later run can clean up after a
dead one (killed by SIGKILL, a crash, a reboot) without touching a live run that shares the cache.

A process is named by its pid and its start time (field 22 of /proc/PID/stat), so a pid that the
kernel reuses for another process never makes a dead run's leftovers look alive.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

from hids_bytecode.procstat import start_ticks

__all__ = ["OWNER", "owner_alive", "make_scratch", "reap_scratch"]


def _start_time(pid: int) -> str | None:
    ticks = start_ticks(pid)
    return None if ticks is None else str(ticks)


OWNER = f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"
_SCRATCH = re.compile(r"^(?P<kind>[a-z]+)-(?P<pid>\d+)-(?P<start>\d+)-")


def owner_alive(owner: str) -> bool:
    """True unless `owner` names a process of this host that is gone; another host's is assumed alive."""
    host, _, rest = owner.partition(":")
    pid, _, start = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    return _start_time(int(pid)) == start


def make_scratch(parent: Path, kind: str) -> Path:
    """A new private directory under `parent` whose name says which process owns it."""
    parent.mkdir(parents=True, exist_ok=True)
    _, pid, start = OWNER.split(":")
    return Path(tempfile.mkdtemp(dir=parent, prefix=f"{kind}-{pid}-{start}-"))


def reap_scratch(parent: Path) -> int:
    """Remove scratch directories of dead processes under `parent`; how many were removed."""
    removed = 0
    host = socket.gethostname()
    for path in parent.glob("*-*-*-*") if parent.is_dir() else ():
        match = _SCRATCH.match(path.name)
        if match and not owner_alive(f"{host}:{match['pid']}:{match['start']}"):
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
    return removed
