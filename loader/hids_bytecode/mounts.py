"""bpffs and tracefs: a fresh machine may have neither mounted, and libbpf needs both (pins live
in bpffs; tracepoint ids are read from tracefs). bpffs is mounted 0700: its default root mode is
1777, which lets any user plant entries where root's pins go."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from .errors import MountError

__all__ = ["ensure_mounted", "ensure_bpf_filesystems", "BPFFS", "TRACEFS"]

BPFFS = Path("/sys/fs/bpf")
TRACEFS = Path("/sys/kernel/tracing")


def _mounted(path: Path, fstype: str) -> bool:
    with open("/proc/self/mounts") as mounts:
        return any(f[1] == str(path) and f[2] == fstype for f in (line.split() for line in mounts) if len(f) > 2)


_OPTIONS = {"bpf": b"mode=0700"}


def ensure_mounted(path: Path, fstype: str) -> bool:
    """Mount `fstype` at `path` unless it is there; True when this call mounted it."""
    if _mounted(path, fstype):
        return False
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(fstype.encode(), str(path).encode(), fstype.encode(), 0, _OPTIONS.get(fstype)) != 0:
        err = ctypes.get_errno()
        raise MountError(f"cannot mount {fstype} at {path}: {os.strerror(err)} (run as root)")
    return True


def ensure_bpf_filesystems() -> None:
    ensure_mounted(BPFFS, "bpf")
    ensure_mounted(TRACEFS, "tracefs")
