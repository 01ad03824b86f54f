"""Content-addressed object cache.

An entry is a directory named by the unit's cache key holding `unit.o` and `meta.json`. It is
written under a temporary name and renamed into place, and read back only when the object's
sha256 matches its metadata, so a build killed at any moment never leaves an entry a later
build trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CachedObject", "ObjectCache"]


@dataclass(frozen=True)
class CachedObject:
    key: str
    data: bytes
    meta: dict[str, Any]


class ObjectCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> CachedObject | None:
        entry = self._dir(key)
        try:
            meta = json.loads((entry / "meta.json").read_text())
            data = (entry / "unit.o").read_bytes()
        except (OSError, ValueError):
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        return CachedObject(key, data, meta)

    def put(self, key: str, data: bytes, meta: dict[str, Any]) -> CachedObject:
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key[:8]}-"))
        try:
            (staging / "unit.o").write_bytes(data)
            (staging / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
            for name in ("unit.o", "meta.json"):
                with open(staging / name, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # a stale or concurrent entry: same key means same inputs
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        return CachedObject(key, data, meta)
