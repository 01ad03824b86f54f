"""The project's version and the build identity that makes every wheel's version unique.

A wheel's version is `<VERSION>+b<12 hex>`: the semantic version of the project, then a PEP 440
local segment naming the exact object set (and loader code) inside. Two different sets of
contents never share a version string, and the same contents always get the same one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["IDENTITY_HEX", "VERSION", "source_hash", "wheel_version"]

VERSION = "0.1.0"
IDENTITY_HEX = 12


def source_hash(entries: Iterable[Mapping[str, Any]], loader_files: Mapping[str, bytes],
                provenance: Mapping[str, Any] | None = None) -> str:
    """sha256 over every unit's object and stitched-source hash, the loader's files, and what the
    provenance and signature add to the wheel (`provenance`: the build's inputs, the git state,
    the signer's fingerprint).

    It spans all arches, so the per-arch wheels of one bundle share a version, as pip expects of
    one release; the loader is part of it because its code ships in the same wheel, and so is the
    provenance: a wheel of another commit or signer holds other bytes, so it gets another version.
    """
    material = {
        "units": sorted([e["unit"], e["sha256"], e["source"]["sha256"]] for e in entries),
        "loader": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(loader_files.items())},
        "provenance": provenance,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def wheel_version(identity: str) -> str:
    """PEP 440 version of a bundle whose source_hash is `identity`."""
    return f"{VERSION}+b{identity[:IDENTITY_HEX]}"
