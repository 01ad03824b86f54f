"""Files and trees the build keeps between runs, written whole and checked on every read.

A cached input that is cut or altered must never be trusted twice: every artifact gets a record
of its sha256 at write time (a `.sha256` sidecar for a file, a `.tree.json` manifest beside an
extracted tree), and a read that does not match it discards the artifact, says so in one line,
and lets the caller rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

from .report import console

__all__ = ["write_atomic", "write_if_changed", "write_checked", "read_checked", "record_tree", "tree_intact", "discard",
           "sha256_file"]

_CHUNK = 1 << 20


def write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part;
    `mode` for a file others read (the temporary file is 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_if_changed(path: Path, data: bytes, mode: int | None = None) -> bool:
    """write_atomic unless `path` already holds exactly `data` (and `mode`, if given); whether it wrote.
    Compared byte for byte, so a file altered since is replaced; a rebuild with nothing changed
    rewrites (and fsyncs) nothing."""
    try:
        st = path.stat()
        if (st.st_size == len(data) and (mode is None or stat.S_IMODE(st.st_mode) == mode)
                and path.read_bytes() == data):
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data, mode)
    return True


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def discard(path: Path, what: str, reason: str) -> None:
    """Remove a corrupt artifact (file or tree) and its record, with the one line that says so."""
    console.print(f"[yellow]discarded[/] {what} ({path}): {reason}; it will be rebuilt", markup=True, soft_wrap=True)
    for p in (path, _sidecar(path), _tree_record(path)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def write_checked(path: Path, data: bytes) -> None:
    """Write `data` and, after it, the record of its hash: a file without its record is never read."""
    write_atomic(path, data)
    write_atomic(_sidecar(path), (hashlib.sha256(data).hexdigest() + "\n").encode())


def read_checked(path: Path, what: str) -> bytes | None:
    """The file's bytes if they match the hash recorded at write; None (and the file discarded) otherwise."""
    if not path.exists():
        return None
    try:
        recorded = _sidecar(path).read_text().strip()
        data = path.read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        discard(path, what, f"unreadable or without its hash record ({exc.__class__.__name__})")
        return None
    if hashlib.sha256(data).hexdigest() != recorded:
        discard(path, what, "content does not match the sha256 recorded when it was written")
        return None
    return data


def _tree_record(root: Path) -> Path:
    return root.with_name(root.name + ".tree.json")


def _walk(root: Path, hashes: bool) -> dict[str, list[object]]:
    """relative path -> [kind, size, mtime_ns, sha256 or link target]; sha256 only when `hashes`.
    Symlinks are recorded, never followed. os.scandir and plain strings: a cold build checks ~200,000
    entries this way, 3x faster than os.walk with a Path and an lstat per entry (7.3 s -> 2.3 s)."""
    entries: dict[str, list[object]] = {}
    stack = [(str(root), "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as found:
            for entry in found:
                rel = prefix + entry.name
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    entries[rel] = ["link", 0, 0, os.readlink(entry.path)]
                elif stat.S_ISDIR(st.st_mode):
                    entries[rel] = ["dir", 0, 0, ""]
                    stack.append((entry.path, rel + "/"))
                elif stat.S_ISREG(st.st_mode):
                    entries[rel] = ["file", st.st_size, st.st_mtime_ns, sha256_file(Path(entry.path)) if hashes else ""]
                else:
                    entries[rel] = ["other", 0, 0, ""]
    return entries


def record_tree(tree: Path, final: Path) -> None:
    """Record every entry of a freshly extracted `tree` (file contents hashed) as the record of
    `final`, the place it is about to be renamed to (a record without its tree is harmless: the
    tree counts as missing)."""
    write_atomic(_tree_record(final), json.dumps(_walk(tree, hashes=True), sort_keys=True).encode())


def tree_intact(root: Path, what: str) -> bool:
    """True when the tree still has every entry recorded, with the same type, size, mtime and link
    target, and nothing more; otherwise it is discarded (with one line) and False.

    Contents were hashed at extraction; on use, size and mtime (ns) stand for them: a header tree
    holds ~10,000 files, hashing them costs ~3 s per kernel on every rebuild, and a cut or
    edited file changes its size or mtime (only root, who owns the cache, could forge both).
    """
    if not root.is_dir():
        return False
    try:
        recorded = {rel: entry[:3] + ([entry[3]] if entry[0] == "link" else [""])
                    for rel, entry in json.loads(_tree_record(root).read_text()).items()}
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        discard(root, what, "no readable record of its files")
        return False
    actual = _walk(root, hashes=False)
    if actual != recorded:
        changed = sorted(set(actual) ^ set(recorded)) or sorted(r for r in actual if actual[r] != recorded[r])
        discard(root, what, f"{len(changed)} entr{'y' if len(changed) == 1 else 'ies'} differ from the record, "
                            f"first {changed[0]}")
        return False
    return True
