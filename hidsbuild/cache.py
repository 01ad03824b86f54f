"""Content-addressed object cache.

An entry is a directory named by the unit's cache key holding `unit.o` and `meta.json`. It is
written in a staging directory owned by this process and renamed into place, so a reader sees a
whole entry or none; staging left by a process that died is removed by the next cache opened on
the same directory. A hit is trusted only when its metadata is well formed, its object matches
the recorded sha256 and size, the object still reads as a BPF object with the programs and
maps recorded, and (given the build's toolchain id) it was compiled by that toolchain; anything
else is discarded with one line and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hids_bytecode.elfinfo import ElfError, Inventory, inventory

from .artifacts import discard
from .owners import make_scratch, reap_scratch

__all__ = ["CachedObject", "ObjectCache"]

# What every entry's meta.json holds, and of which type: anything else is not an entry of ours.
_META_TYPES = {"sha256": str, "size": int, "programs": list, "maps": list, "compile_ns": int, "clang": str,
               "toolchain": str}


@dataclass(frozen=True)
class CachedObject:
    key: str
    data: bytes
    meta: dict[str, Any]


class ObjectCache:
    def __init__(self, root: Path, toolchain_id: str | None = None) -> None:
        """`toolchain_id`: the id every hit must record as the toolchain that compiled it. The id
        is part of each key already; checking it again keeps an entry that lies about its compiler
        (written by a bug, or edited) from being paired with this build's toolchain."""
        self.root = root
        self.toolchain_id = toolchain_id
        # sha256 -> what the ELF reader found in those bytes: units that share an object (a third
        # of a matrix's) are read once per run; each hit's bytes are still hashed and compared.
        self._inventories: dict[str, Inventory | str] = {}
        self._staging = root / ".staging"
        reap_scratch(self._staging)

    def _dir(self, key: str) -> Path:
        return self.root / key[:2] / key

    def _problem(self, data: bytes, meta: Any) -> str | None:
        if not isinstance(meta, dict) or any(not isinstance(meta.get(k), t) for k, t in _META_TYPES.items()):
            return "meta.json is not an entry's metadata"
        if self.toolchain_id is not None and meta["toolchain"] != self.toolchain_id:
            return f"compiled by toolchain {meta['toolchain']}, not this build's {self.toolchain_id}"
        if len(data) != meta["size"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
            return "the object does not match the sha256 and size recorded when it was cached"
        # The full validation ran before the object was cached; on every hit the loader's own ELF
        # reader (0.4 ms, against pyelftools' 13 ms: a no-op build reads every object) checks it
        # is still a BPF object with the programs and maps recorded.
        found = self._inventories.get(meta["sha256"])
        if found is None:
            try:
                found = inventory(data)
            except ElfError as exc:
                found = f"the object no longer reads as a BPF object: {exc}"
            self._inventories[meta["sha256"]] = found
        if isinstance(found, str):
            return found
        try:
            recorded = {(p["name"], p["section"]) for p in meta["programs"]}
        except (TypeError, KeyError):
            return "meta.json's programs are not an entry's"
        if found.programs != recorded or found.maps != set(meta["maps"]):
            return "the object's programs or maps differ from those recorded"
        return None

    def get(self, key: str) -> CachedObject | None:
        entry = self._dir(key)
        if not entry.is_dir():
            return None
        try:
            meta = json.loads((entry / "meta.json").read_text())
            data = (entry / "unit.o").read_bytes()
        except (OSError, ValueError) as exc:
            problem: str | None = f"unreadable ({exc.__class__.__name__})"
        else:
            problem = self._problem(data, meta)
        if problem:
            discard(entry, f"cached object {key[:12]}", problem)
            return None
        return CachedObject(key, data, meta)

    def put(self, key: str, data: bytes, meta: dict[str, Any]) -> CachedObject:
        meta = {**meta, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        final = self._dir(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = make_scratch(self._staging, "put")
        try:
            for name, content in (("unit.o", data), ("meta.json", json.dumps(meta, indent=1, sort_keys=True).encode())):
                with open(staging / name, "wb") as fh:
                    fh.write(content)
                    fh.flush()
                    os.fsync(fh.fileno())
            try:
                staging.rename(final)
            except OSError:
                # Another build sharing this cache put the same key (same inputs) first: keep a
                # good entry, replace a bad one.
                existing = self.get(key)
                if existing is not None:
                    return existing
                staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return CachedObject(key, data, meta)
