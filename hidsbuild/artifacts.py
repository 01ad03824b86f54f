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

__all__ = ["write_atomic", "write_checked", "read_checked", "record_tree", "tree_intact", "discard", "sha256_file"]

_CHUNK = 1 << 20


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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


def _walk(root: Path) -> dict[str, str]:
    """relative path -> 'sha256:<hex>' for files, 'link:<target>' for symlinks, 'dir' for directories."""
    entries: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        base = Path(directory)
        for name in dirs + files:
            path = base / name
            rel = str(path.relative_to(root))
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                entries[rel] = "link:" + os.readlink(path)
            elif stat.S_ISDIR(mode):
                entries[rel] = "dir"
            elif stat.S_ISREG(mode):
                entries[rel] = "sha256:" + sha256_file(path)
            else:
                entries[rel] = "other"
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return entries


def record_tree(tree: Path, final: Path) -> None:
    """Record every file's hash of a freshly extracted `tree` as the record of `final`, the place it
    is about to be renamed to (a record without its tree is harmless: the tree counts as missing)."""
    write_atomic(_tree_record(final), json.dumps(_walk(tree), sort_keys=True).encode())


def tree_intact(root: Path, what: str) -> bool:
    """True when the tree is exactly as recorded; otherwise it is discarded (with one line) and False."""
    if not root.is_dir():
        return False
    try:
        recorded = json.loads(_tree_record(root).read_text())
    except (OSError, ValueError):
        discard(root, what, "no record of its files")
        return False
    actual = _walk(root)
    if actual != recorded:
        changed = sorted(set(actual.items()) ^ set(recorded.items()))
        discard(root, what, f"{len(changed)} entr{'y' if len(changed) == 1 else 'ies'} differ from the record, "
                            f"first {changed[0][0]}")
        return False
    return True
