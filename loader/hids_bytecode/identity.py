"""Who an event belongs to: the host's name and, from the event's cgroup id, the container.

The probes record bpf_get_current_cgroup_id(): the id of the task's cgroup v2 directory (kernfs),
which is also its inode number. The resolver turns an id into that directory's path the way the
kernel exposes it: open_by_handle_at(2) with a kernfs file handle (type FILEID_KERNFS, the 8-byte
id) on the cgroup2 mount, then the path the kernel reports for that fd. One syscall per new id,
no walk of the tree, and no race with a scan: a cgroup created just before its first event is
found. Ids are never reused, so every answer is cached (bounded); a cgroup removed before its
events are read resolves to nothing and the record has no container.

Cgroup paths are untrusted input (a user with a delegated subtree names its own cgroups): only a
path component that fully matches a runtime's pattern with a 64-hex id counts, nothing else in the
path is interpreted, and such a user can only label its own processes.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys
from dataclasses import dataclass

__all__ = ["Container", "container_of", "CgroupResolver", "host_name", "cgroup2_mount"]

# docker/containerd/cri-o/podman under systemd: <prefix>-<id>.scope; docker and podman under the
# cgroupfs driver: docker/<id>, libpod_parent/libpod-<id>; containerd/cri-o under kubepods or a
# containerd namespace: a bare <id> component.
_SCOPE = re.compile(r"(docker|cri-containerd|crio|libpod)-([0-9a-f]{64})(?:\.scope)?")
_BARE = re.compile(r"[0-9a-f]{64}")
_RUNTIMES = {"docker": "docker", "cri-containerd": "containerd", "crio": "cri-o", "libpod": "podman"}
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


class _FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 8)]


_FILEID_KERNFS = 0xFE
# The C library this interpreter already runs on (dlopen(NULL)); find_library would fork ldconfig,
# and a fork before the agent pid is in `config` is an event of the agent itself.
_libc = ctypes.CDLL(None, use_errno=True)


class CgroupResolver:
    """cgroup id -> path below the cgroup2 mount (e.g. `/system.slice/docker-<id>.scope`)."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root if root is not None else cgroup2_mount()
        self._paths: dict[int, str | None] = {}
        self._mount_fd: int | None = None

    def path(self, cgroup_id: int) -> str | None:
        root = self.root
        if not root or not cgroup_id:
            return None
        if cgroup_id not in self._paths:
            if len(self._paths) >= _MAX_CACHE:
                self._paths.clear()
            self._paths[cgroup_id] = self._lookup(root, cgroup_id)
        return self._paths[cgroup_id]

    def container(self, cgroup_id: int) -> Container | None:
        path = self.path(cgroup_id)
        return container_of(path) if path else None

    def _lookup(self, root: str, cgroup_id: int) -> str | None:
        if self._mount_fd is None:
            try:
                self._mount_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                self.root = None
                return None
        handle = _FileHandle(8, _FILEID_KERNFS, (ctypes.c_ubyte * 8)(*cgroup_id.to_bytes(8, sys.byteorder)))
        fd = _libc.open_by_handle_at(self._mount_fd, ctypes.byref(handle),
                                     os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if fd < 0:  # removed already (ESTALE), or no CAP_DAC_READ_SEARCH
            return None
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        finally:
            os.close(fd)
        if where.endswith(" (deleted)") or not (where == root or where.startswith(root + "/")):
            return None
        return where[len(root):] or "/"

    def close(self) -> None:
        if self._mount_fd is not None:
            os.close(self._mount_fd)
            self._mount_fd = None
