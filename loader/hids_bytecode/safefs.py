"""Opening files on a host where other users may plant or swap things: paths are walked one
component at a time with O_NOFOLLOW from a directory fd, and what is found is checked with fstat
on the descriptor actually used (owner, mode, file type), so a check and its use cannot diverge.

Trusted owners are root and the effective uid. Rules (docs/THREAT_MODEL.md):
- a private directory (the runtime-compile cache) is reached from / through no symlink; every
  ancestor is owned by a trusted owner and is not group/world-writable, unless it has the sticky
  bit (/tmp): there others cannot rename or remove our entries, and the next component, checked in
  turn, must be ours. The directory itself is owned by a trusted owner, not group/world-writable.
- a file beneath a root (the package data dir) is named by a clean relative path and reached
  through no symlink; it is a regular file.
- an executable (a compiler) is a regular file owned by root, not group/world-writable, whose real
  path has only root-owned, not group/world-writable ancestors (no sticky exception).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

__all__ = ["Unsafe", "relative_path_problem", "open_private_dir", "open_beneath", "open_private_file",
           "read_fd", "trusted_executable"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a checked name must not hang the open before fstat refuses it.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class Unsafe(Exception):
    """A path that fails one of the rules above; `str()` is a one-line reason naming it."""


def _trusted_owners() -> set[int]:
    return {0, os.geteuid()}


def _writable_by_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & _OTHERS_WRITE)


def relative_path_problem(rel: object) -> str | None:
    """Why `rel` is not a clean relative path (None when it is): not a string, empty, absolute,
    with `.`/`..`/empty components or a NUL."""
    if not isinstance(rel, str) or not rel:
        return "is not a non-empty string"
    if "\0" in rel:
        return "contains a NUL byte"
    if rel.startswith("/"):
        return "is absolute"
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "is not normalised (empty, '.' or '..' components)"
    return None


def _open_dir_at(parent: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            kind = "a symlink" if os.path.islink(shown) else "not a directory"
            raise Unsafe(f"{shown} is {kind}") from None
        raise


def _check_owner(st: os.stat_result, shown: str) -> None:
    if st.st_uid not in _trusted_owners():
        raise Unsafe(f"{shown} is owned by uid {st.st_uid}, not root or uid {os.geteuid()}")


def open_private_dir(path: Path, create: bool = False) -> int:
    """An O_DIRECTORY fd on `path` after checking the whole chain from /; when `create`, missing
    components are made 0700 (fixed up against the umask) and then checked like the rest."""
    if not path.is_absolute():
        raise Unsafe(f"{path} is not an absolute path")
    parts = PurePosixPath(os.path.normpath(path)).parts[1:]
    fd = os.open("/", _DIR_FLAGS)
    shown = "/"
    try:
        for name in parts:
            st = os.fstat(fd)
            _check_owner(st, shown)
            if _writable_by_others(st) and not st.st_mode & stat.S_ISVTX:
                raise Unsafe(f"{shown} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
            shown = os.path.join(shown, name)
            try:
                child = _open_dir_at(fd, name, shown)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False  # made concurrently: checked below like any existing directory
                child = _open_dir_at(fd, name, shown)
                if made:
                    os.fchmod(child, 0o700)  # mkdir's mode went through the umask
            os.close(fd)
            fd = child
        st = os.fstat(fd)
        _check_owner(st, shown)
        if _writable_by_others(st):
            raise Unsafe(f"{shown} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _regular(fd: int, shown: str) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise Unsafe(f"{shown} is not a regular file")
    return st


def _open_file_at(parent: int, name: str, shown: str) -> int:
    try:
        return os.open(name, _FILE_FLAGS, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a symlink
            raise Unsafe(f"{shown} is a symlink") from None
        raise


def open_beneath(root: Path, rel: str) -> int:
    """A read fd on the regular file `root/rel`, reached through no symlink below `root`."""
    problem = relative_path_problem(rel)
    if problem:
        raise Unsafe(f"path {rel!r} {problem}")
    *dirs, leaf = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    shown = str(root)
    try:
        for name in dirs:
            shown = os.path.join(shown, name)
            child = _open_dir_at(fd, name, shown)
            os.close(fd)
            fd = child
        shown = os.path.join(shown, leaf)
        opened = _open_file_at(fd, leaf, shown)
    finally:
        os.close(fd)
    _regular(opened, shown)
    return opened


def open_private_file(dir_fd: int, name: str, shown: str) -> int:
    """A read fd on `name` in a checked private dir: a regular file of a trusted owner that no
    one else can write, with no other hard link."""
    fd = _open_file_at(dir_fd, name, shown)
    st = _regular(fd, shown)
    try:
        _check_owner(st, shown)
        if _writable_by_others(st) or st.st_nlink != 1:
            raise Unsafe(f"{shown} is writable by others or hard-linked (mode {stat.S_IMODE(st.st_mode):04o}, "
                         f"{st.st_nlink} links)")
    except Unsafe:
        os.close(fd)
        raise
    return fd


def read_fd(fd: int, limit: int | None = None) -> bytes:
    """Everything from `fd`, which is then closed; more than `limit` bytes raises Unsafe."""
    with os.fdopen(fd, "rb") as f:
        os.set_blocking(fd, True)
        data = f.read() if limit is None else f.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise Unsafe(f"more than {limit} bytes")
    return data


def trusted_executable(path: Path, executable: bool = True) -> Path | None:
    """`path`'s real path if it is a root-owned file (an executable unless `executable` is False:
    a shared library) that only root can change, else None."""
    real = Path(os.path.realpath(path))
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or _writable_by_others(st) or \
                (executable and not st.st_mode & 0o111):
            return None
        for parent in real.parents:
            pst = os.lstat(parent)
            if pst.st_uid != 0 or _writable_by_others(pst) or not stat.S_ISDIR(pst.st_mode):
                return None
    except OSError:
        return None
    return real
