"""The pin tree: /sys/fs/bpf/hids/<program>/{maps,progs,links}/<name> (docs/PINS.md).

Other users share the host, so the tree is trusted only while it is a root-owned 0700 directory
on bpffs under root-owned ancestors no one else can rewrite; it is checked on every use. One
flock on the tree's root directory serialises load, unload and watch set-up (bpffs holds no
regular files, but a directory fd takes a flock). A load pins into `_staging_<pid>` and renames
it into place, so `<program>` is either complete or absent; a staging dir found by the next lock
holder belongs to a dead process (only a holder writes one) and is removed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import interrupts
from .errors import (
    AlreadyLoaded,
    Busy,
    InvalidArgument,
    NotLoaded,
    NotPermitted,
    PinTreeError,
)
from .mounts import BPFFS

__all__ = ["PIN_ENV", "BPF_FS_MAGIC", "PROGRAM_NAME", "check_name", "pin_root", "pin_dir", "PinTree",
           "locked_tree", "lock_holder"]

PIN_ENV = "HIDS_BYTECODE_PIN_ROOT"
BPF_FS_MAGIC = 0xCAFE4A11
PROGRAM_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_PIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # bpffs refuses dots; libbpf turns them into _
_STALE = re.compile(r"_(staging|unload)_(\d+)")  # bpffs refuses dots; no program name starts with _
SUBDIRS = ("links", "progs", "maps")  # removal order: detach first, then free programs, then maps
LOCK_WAIT_S = 30.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_RENAME_NOREPLACE = 1
_AT_FDCWD = -100

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def check_name(program: str) -> str:
    """`program` if it matches the fixed pattern; names are never joined into paths otherwise."""
    if not isinstance(program, str) or not PROGRAM_NAME.fullmatch(program):
        raise InvalidArgument(f"invalid program name {program!r}: must match {PROGRAM_NAME.pattern}")
    return program


def pin_root() -> Path:
    """The tree's root (HIDS_BYTECODE_PIN_ROOT overrides, for tests; the same checks apply)."""
    root = os.environ.get(PIN_ENV) or str(BPFFS / "hids")
    if not os.path.isabs(root) or os.path.normpath(root) != root.rstrip("/") or root == "/":
        raise PinTreeError(f"{PIN_ENV}={root!r} must be an absolute, normalised path")
    return Path(root)


def pin_dir(program: str) -> Path:
    return pin_root() / check_name(program)


def _fs_magic(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type (a long) comes first
    if _libc.fstatfs(fd, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _check_ancestors(root: Path) -> None:
    """Every ancestor root-owned, not a symlink, and not writable by others unless sticky: else
    another user could rename the tree away and put their own in its place."""
    for parent in root.parents:
        st = os.lstat(parent)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
            raise PinTreeError(f"refusing pin tree {root}: {parent} is not a directory (a symlink?)")
        if st.st_uid != 0:
            raise PinTreeError(f"refusing pin tree {root}: {parent} is owned by uid {st.st_uid}, not root")
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise PinTreeError(f"refusing pin tree {root}: {parent} is writable by others "
                               f"(mode {stat.S_IMODE(st.st_mode):o})")


def _check_root(root: Path, fd: int) -> os.stat_result:
    """The open root directory: root-owned, no group/other access, on bpffs, still at `root`."""
    st = os.fstat(fd)
    try:
        now = os.lstat(root)
    except FileNotFoundError:
        now = None
    if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise FileNotFoundError(errno.ENOENT, "replaced while opening", str(root))
    if st.st_uid != 0 or st.st_mode & 0o077:
        raise PinTreeError(f"refusing pin tree {root}: owned by uid {st.st_uid} with mode "
                           f"{stat.S_IMODE(st.st_mode):o}; it must be root-owned 0700 (remove it and retry)")
    if _fs_magic(fd) != BPF_FS_MAGIC:
        raise PinTreeError(f"refusing pin tree {root}: not on bpffs")
    return st


def lock_holder(st: os.stat_result) -> int | None:
    """The pid holding a flock on the inode `st`, from /proc/locks."""
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            if "FLOCK" in fields and key in fields:
                return int(fields[fields.index(key) - 1])
    return None


class PinTree:
    """The checked, locked root: every operation below goes through its directory fd."""

    def __init__(self, path: Path, fd: int, st: os.stat_result) -> None:
        self.path, self.fd, self.dev = path, fd, st.st_dev

    def _lstat(self, name: str, dir_fd: int) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def loaded(self, program: str) -> bool:
        st = self._lstat(check_name(program), self.fd)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise PinTreeError(f"{self.path / program} is not a pin directory; remove it by hand")
        return st is not None

    def staging(self, subdirs: tuple[str, ...] = SUBDIRS) -> str:
        """A fresh `_staging_<pid>` with `subdirs`; its name."""
        name = f"_staging_{os.getpid()}"
        os.mkdir(name, 0o700, dir_fd=self.fd)
        for sub in subdirs:
            os.mkdir(f"{name}/{sub}", 0o700, dir_fd=self.fd)
        return name

    def commit(self, staging: str, program: str) -> Path:
        """Rename the staging dir to `program`, never over an existing one."""
        rc = _libc.renameat2(self.fd, staging.encode(), self.fd, check_name(program).encode(), _RENAME_NOREPLACE)
        if rc != 0:
            err = ctypes.get_errno()
            if err in (errno.EEXIST, errno.ENOTEMPTY):
                raise AlreadyLoaded(f"{program} is already loaded (pins under {self.path / program})")
            raise PinTreeError(f"cannot move {staging} to {program}: {os.strerror(err)}")
        return self.path / program

    def unload(self, program: str) -> list[Path]:
        """Move `program` out of the way (so it is gone at once), then remove its pins."""
        if not self.loaded(program):
            raise NotLoaded(f"{program} is not loaded (no pins under {self.path / program})")
        doomed = f"_unload_{os.getpid()}"
        os.rename(program, doomed, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        removed, unknown = self.remove(doomed)
        if unknown:
            raise PinTreeError(f"{program}: removed {len(removed)} pins, left {len(unknown)} entries it did not "
                               f"create: {', '.join(unknown[:3])} (under {self.path / doomed})")
        return [self.path / program / p.relative_to(self.path / doomed) for p in removed]

    def remove(self, name: str) -> tuple[list[Path], list[str]]:
        """Unlink the pins the loader recognises under `name` (never following a link, never
        leaving this filesystem); the removed paths and the entries left alone."""
        removed: list[Path] = []
        unknown: list[str] = []
        top = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        try:
            for entry in os.listdir(top):
                if entry not in SUBDIRS:
                    unknown.append(f"{name}/{entry}")
            for sub in SUBDIRS:
                st = self._lstat(sub, top)
                if st is None:
                    continue
                if not stat.S_ISDIR(st.st_mode) or st.st_dev != self.dev:
                    unknown.append(f"{name}/{sub}")
                    continue
                sub_fd = os.open(sub, _DIR_FLAGS, dir_fd=top)
                try:
                    for entry in os.listdir(sub_fd):
                        est = self._lstat(entry, sub_fd)
                        if (est is None or not stat.S_ISREG(est.st_mode) or est.st_dev != self.dev
                                or not _PIN_NAME.fullmatch(entry)):
                            unknown.append(f"{name}/{sub}/{entry}")
                            continue
                        os.unlink(entry, dir_fd=sub_fd)
                        removed.append(self.path / name / sub / entry)
                finally:
                    os.close(sub_fd)
                if not any(u.startswith(f"{name}/{sub}/") for u in unknown):
                    os.rmdir(sub, dir_fd=top)
        finally:
            os.close(top)
        if not unknown:
            os.rmdir(name, dir_fd=self.fd)
        return removed, unknown

    def discard_stale(self) -> None:
        """Remove staging/unload dirs of processes that died holding the lock."""
        mine = str(os.getpid())
        for entry in os.listdir(self.fd):
            stale = _STALE.fullmatch(entry)
            if stale and stale.group(2) != mine:
                self.remove(entry)

    def hold(self, program: str) -> int:
        """An fd flock'd on `program`'s directory for as long as it stays open: the one consumer
        of its ring. Busy, naming the holder's pid, when another process has it."""
        fd = os.open(check_name(program), _DIR_FLAGS, dir_fd=self.fd)
        st = os.fstat(fd)
        try:
            if st.st_uid != 0 or st.st_dev != self.dev:
                raise PinTreeError(f"{self.path / program} is not a pin directory the loader made")
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Busy(f"{program}'s events are already read by pid {lock_holder(st) or '?'}; "
                       f"one consumer per ring (stop it first)") from None
        except BaseException:
            os.close(fd)
            raise
        return fd


def _open_root(root: Path, create: bool) -> int | None:
    if create:
        try:
            os.mkdir(root, 0o700)
        except FileExistsError:
            pass
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PinTreeError(f"refusing pin tree {root}: not a directory (a symlink?)") from None
        raise


def _lock(root: Path, fd: int, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                holder = lock_holder(os.fstat(fd))
                raise Busy(f"pin tree {root} stayed locked by pid {holder or '?'} for {LOCK_WAIT_S:.0f} s") from None
            interrupts.check()  # polled, not blocking: a signal ends the wait
            time.sleep(0.02)


def _acquire(root: Path, create: bool) -> tuple[int, os.stat_result]:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        fd = _open_root(root, create)
        if fd is None:
            raise NotLoaded(f"nothing is loaded (no pin tree at {root})")
        try:
            _lock(root, fd, deadline)
            return fd, _check_root(root, fd)
        except FileNotFoundError:  # removed by the previous holder after we opened it: start over
            os.close(fd)
        except BaseException:
            os.close(fd)
            raise


@contextmanager
def locked_tree(create: bool) -> Iterator[PinTree]:
    """The checked pin tree under its exclusive lock. NotLoaded when it is absent and `create` is
    false. Left empty, the root is removed before the lock is dropped."""
    if os.geteuid() != 0:
        # Checked first: an unprivileged mkdir in a 1777 bpffs would plant a tree root must refuse.
        raise NotPermitted("the pin tree is root's: run hids-bytecode as root")
    root = pin_root()
    _check_ancestors(root)
    fd = None
    try:
        with interrupts.deferred():  # a signal surfaces only where no fd or empty root is left behind
            fd, st = _acquire(root, create)
            tree = PinTree(root, fd, st)
            tree.discard_stale()
        yield tree
    finally:
        if fd is not None:
            with interrupts.deferred():
                try:
                    os.rmdir(root)  # under the lock: only an empty tree goes
                except OSError:
                    pass
                os.close(fd)
