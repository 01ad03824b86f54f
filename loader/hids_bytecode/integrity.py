"""Object integrity: an object's bytes are hashed and compared with the manifest before any
bpf() call, and it is the checked bytes (not a second read of the file) that get loaded.

Shipped files are opened only beneath the data dir, through no symlink, and must be regular files
(safefs.open_beneath); an object's programs and maps, read from its ELF, must be the ones its
manifest entry lists, so an entry only ever loads the object it describes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from . import safefs
from .elfinfo import ElfError, inventory
from .errors import HidsError, IntegrityError
from .manifest import Entry, Manifest, read_provenance
from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["provenance_problems", "read_verified", "read_object", "read_source", "source_problem", "check_inventory",
           "AuditResult", "audit_objects"]


def _hashed(data: bytes, path: Path, sha256: str, what: str) -> bytes:
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise IntegrityError(f"{what} {path} has sha256 {actual[:16]}..., manifest says {sha256[:16]}...; refusing it")
    return data


def read_verified(path: Path, sha256: str, what: str = "object") -> bytes:
    """The file's bytes, only if it is a regular file (not a symlink) and they hash to `sha256`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IntegrityError(f"{what} {path} is not a regular file; refusing it")
        data = safefs.read_fd(fd)
    except OSError as exc:
        reason = "it is a symlink" if os.path.islink(path) else exc.strerror or exc
        raise IntegrityError(f"cannot read {what} {path}: {reason}") from None
    return _hashed(data, path, sha256, what)


def _read_beneath(entry: Entry, rel: str, sha256: str, what: str) -> bytes:
    try:
        data = safefs.read_fd(safefs.open_beneath(entry.data, rel))
    except safefs.Unsafe as exc:
        raise IntegrityError(f"{entry.unit}: refusing {what}: {exc}") from None
    except OSError as exc:
        raise IntegrityError(f"cannot read {what} {entry.data / rel}: {exc.strerror or exc}") from None
    return _hashed(data, entry.data / rel, sha256, what)


def check_inventory(entry: Entry, data: bytes) -> None:
    """Refuse `data` unless its programs (name, section) and maps are exactly the entry's."""
    try:
        found = inventory(data)
    except ElfError as exc:
        raise IntegrityError(f"{entry.unit}: object {entry.object_path} is not a BPF object: {exc}") from None
    listed = {(p.get("name"), p.get("section")) for p in entry.raw["programs"] if isinstance(p, dict)}
    problems = []
    named = ({f"{n} ({s})" for n, s in found.programs}, {f"{n} ({s})" for n, s in listed})
    for what, have, want in (("programs", *named), ("maps", set(found.maps), set(entry.raw["maps"]))):
        if have - want:
            problems.append(f"{what} not in its manifest entry: {', '.join(sorted(have - want))}")
        if want - have:
            problems.append(f"{what} of its manifest entry missing: {', '.join(sorted(want - have))}")
    if problems:
        raise IntegrityError(f"{entry.unit}: object {entry.object_path} does not match its manifest entry "
                             f"({'; '.join(problems)}); refusing it")


def read_object(entry: Entry) -> bytes:
    """The entry's object bytes: beneath the data dir, hash-checked, programs and maps checked."""
    data = _read_beneath(entry, entry.raw["object"], entry.sha256, "object")
    check_inventory(entry, data)
    return data


def read_source(entry: Entry) -> bytes:
    """The entry's stitched source, beneath the data dir and hash-checked."""
    source = entry.raw.get("source")
    if not source:
        raise IntegrityError(f"{entry.unit} ships no source")
    return _read_beneath(entry, source["path"], source["sha256"], "source")


def source_problem(entry: Entry) -> str | None:
    """Why the entry's source cannot be compiled from (None when it is present and safe to open)."""
    source = entry.raw.get("source")
    if not source:
        return f"{entry.unit} ships no source"
    try:
        os.close(safefs.open_beneath(entry.data, source["path"]))
    except safefs.Unsafe as exc:
        return f"stitched source refused: {exc}"
    except OSError as exc:
        return f"stitched source {entry.data / source['path']} is not in the data directory ({exc.strerror})"
    return None


class AuditResult(Record):
    __slots__ = ("entry", "ok", "reason")

    def __init__(self, entry: Entry, ok: bool, reason: str) -> None:
        self.entry: Final = entry
        self.ok: Final = ok
        self.reason: Final = reason


def audit_objects(manifest: Manifest) -> list[AuditResult]:
    """Every object (and shipped source) of the manifest against its recorded hash and inventory."""
    results = []
    for entry in manifest.entries:
        try:
            read_object(entry)
            if entry.raw.get("source"):
                read_source(entry)
            results.append(AuditResult(entry, True, "ok"))
        except IntegrityError as exc:
            results.append(AuditResult(entry, False, str(exc)))
    return results


def provenance_problems(manifest: Manifest) -> list[str]:
    """What differs between the provenance's subjects and the installed package: its code, objects
    and sources (dist-info files only where present; pip rewrites RECORD). A wheel bundled before
    provenance existed has nothing to check."""
    if manifest.provenance is None:
        return []
    try:
        doc = read_provenance(manifest)
    except HidsError as exc:
        return [str(exc)]
    root = manifest.path.parent.parent.parent  # <root>/hids_bytecode/data/manifest.json
    problems = []
    for subject in doc.get("subject", []):
        name, digest = str(subject.get("name", "")), subject.get("digest", {}).get("sha256")
        path = root / name
        if not path.is_file() or path.is_symlink():
            if name.startswith("hids_bytecode/"):
                problems.append(f"{name}: missing (the provenance names it)")
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{name}: differs from the provenance's sha256")
    return problems
