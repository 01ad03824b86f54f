"""Object integrity: an object's bytes are hashed and compared with the manifest before any
bpf() call, and it is the checked bytes (not a second read of the file) that get loaded."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from .errors import IntegrityError
from .manifest import Entry, Manifest

__all__ = ["read_verified", "VerifyResult", "verify_manifest"]


def read_verified(path: Path, sha256: str, what: str = "object") -> bytes:
    """The file's bytes, only if they hash to `sha256`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise IntegrityError(f"{what} {path} has sha256 {actual[:16]}..., manifest says {sha256[:16]}...; refusing it")
    return data


@dataclass(frozen=True)
class VerifyResult:
    entry: Entry
    ok: bool
    reason: str


def verify_manifest(manifest: Manifest) -> list[VerifyResult]:
    """Every object (and shipped source) of the manifest against its recorded hash."""
    results = []
    for entry in manifest.entries:
        try:
            read_verified(entry.object_path, entry.sha256)
            source = entry.raw.get("source")
            if source and entry.source_path is not None:
                read_verified(entry.source_path, source["sha256"], "source")
            results.append(VerifyResult(entry, True, "ok"))
        except IntegrityError as exc:
            results.append(VerifyResult(entry, False, str(exc)))
    return results
