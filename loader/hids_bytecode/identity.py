"""Who an event belongs to: the host's name and, from the event's cgroup id, the container.

The probes record bpf_get_current_cgroup_id(): the cgroup v2 id, which is the inode number of
that cgroup's directory in the cgroup2 filesystem. The resolver walks the cgroup2 mount once,
mapping inode -> path (scandir's d_ino, no stat per directory), and walks again, at most every
`rescan_s`, when an unknown id arrives. A cgroup removed before its events are read resolves to
nothing: the record then has no container.

Cgroup paths are untrusted input (a user with a delegated subtree names its own cgroups): only a
path component that fully matches a runtime's pattern with a 64-hex id counts, nothing else in the
path is interpreted, and such a user can only label its own processes.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

__all__ = ["Container", "container_of", "CgroupResolver", "host_name", "cgroup2_mount"]

# docker/containerd/cri-o/podman under systemd: <prefix>-<id>.scope; docker and podman under the
# cgroupfs driver: docker/<id>, libpod_parent/libpod-<id>; containerd/cri-o under kubepods or a
# containerd namespace: a bare <id> component.
_SCOPE = re.compile(r"(docker|cri-containerd|crio|libpod)-([0-9a-f]{64})(?:\.scope)?")
_BARE = re.compile(r"[0-9a-f]{64}")
_RUNTIMES = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}
_MAX_DEPTH = 32
_MAX_DIRS = 200_000
_MAX_CACHE = 65_536


@dataclass(frozen=True)
class Container:
    id: str
    runtime: str | None  # None: a bare id whose runtime the path does not name


def container_of(path: str) -> Container | None:
    """The innermost container a cgroup path names, if any."""
    parts = [p for p in path.split("/") if p]
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        match = _SCOPE.fullmatch(part)
        if match:
            return Container(match.group(2), _RUNTIMES[match.group(1)])
        if _BARE.fullmatch(part):
            parent = parts[index - 1] if index else ""
            return Container(part, "docker" if parent == "docker" else None)
    return None


def host_name() -> str:
    return os.uname().nodename


def cgroup2_mount(mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid hosts)."""
    try:
        with open(mountinfo) as lines:
            for line in lines:
                fields = line.split()
                if " - cgroup2 " in line and len(fields) > 4:
                    return fields[4]
    except OSError:
        return None
    return None


class CgroupResolver:
    """cgroup id -> path below the cgroup2 mount (e.g. `/system.slice/docker-<id>.scope`)."""

    def __init__(self, root: str | None = None, rescan_s: float = 0.5) -> None:
        self.root = root if root is not None else cgroup2_mount()
        self.rescan_s = rescan_s
        self._paths: dict[int, str] = {}
        self._misses: set[int] = set()
        self._scanned = float("-inf")

    def path(self, cgroup_id: int) -> str | None:
        if not self.root or not cgroup_id:
            return None
        found = self._paths.get(cgroup_id)
        if found is not None or (cgroup_id in self._misses and not self._may_rescan()):
            return found
        if self._may_rescan():
            self._scan()
        found = self._paths.get(cgroup_id)
        if found is None and len(self._misses) < _MAX_CACHE:
            self._misses.add(cgroup_id)
        return found

    def container(self, cgroup_id: int) -> Container | None:
        path = self.path(cgroup_id)
        return container_of(path) if path else None

    def _may_rescan(self) -> bool:
        return time.monotonic() - self._scanned >= self.rescan_s

    def _scan(self) -> None:
        self._scanned = time.monotonic()
        paths: dict[int, str] = {}
        try:
            paths[os.stat(self.root).st_ino] = "/"
        except OSError:
            return
        stack = [(self.root, "", 0)]
        seen = 0
        while stack and seen < _MAX_DIRS:
            directory, rel, depth = stack.pop()
            try:
                entries = list(os.scandir(directory))
            except OSError:  # removed while walking
                continue
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                seen += 1
                child = f"{rel}/{entry.name}"
                paths[entry.inode()] = child
                if depth + 1 < _MAX_DEPTH:
                    stack.append((entry.path, child, depth + 1))
        self._paths = paths
        self._misses.clear()
