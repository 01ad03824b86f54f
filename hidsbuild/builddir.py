"""Reading build directories for the wheel: every file checked against index.json, shards joined.

A build (or shard) directory is trusted only after each object and stitched source the index
names is present with the size and sha256 the index records, and nothing else lies in
objects/ or sources/. The index's `inputs` (for provenance) are carried along. Joining shards
keeps one entry per unit; two shards that disagree about a unit are refused, so a merged bundle
always equals the one-shot bundle of the same matrix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hids_bytecode.arches import ARCHES

from .errors import BundleError

__all__ = ["BuildDir", "Bundle", "join", "read_build_dir"]

_ENTRY_KEYS = ("unit", "program", "kind", "kernel", "variant", "object", "sha256", "size", "programs", "maps",
               "toolchain", "source")
# Per-build facts, not properties of the object: kept out so the same object set bundles the same.
_BUILD_ONLY_KEYS = ("compile_ns",)


@dataclass(frozen=True)
class BuildDir:
    path: Path
    entries: dict[str, dict[str, Any]]  # unit id -> manifest entry
    files: dict[str, bytes]  # "objects/<sha>.o" / "sources/<name>.c" -> checked contents
    inputs: dict[str, Any] | None  # index.json's "inputs" (provenance); None from builds that predate it
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # unit id -> {unit, arch, reason}: not built


@dataclass
class Bundle:
    """The joined contents of one or more build directories."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    origin: dict[str, Path] = field(default_factory=dict)  # unit id -> the build dir it came from
    inputs: dict[str, Any] | None = None  # every shard's inputs, joined
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # every shard's units that cannot run

    def arches(self) -> list[str]:
        return sorted({e["kernel"]["arch"] for e in self.entries.values()})

    def for_arch(self, arch: str) -> list[dict[str, Any]]:
        return [self.entries[u] for u in sorted(self.entries) if self.entries[u]["kernel"]["arch"] == arch]


def _load_index(path: Path) -> dict[str, Any]:
    index_path = path / "index.json"
    if not path.is_dir():
        raise BundleError(f"{path}: not a build directory")
    try:
        index = json.loads(index_path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{index_path}: missing; run `invoke build-all` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{index_path}: unreadable: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{index_path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(index, dict) or index.get("schema") != 1 or not isinstance(index.get("units"), list):
        raise BundleError(f"{index_path}: expected schema 1 with a units list")
    failures = index.get("failures") or []
    if failures:
        names = ", ".join(str(f.get("unit")) if isinstance(f, dict) else str(f) for f in failures)
        raise BundleError(f"{index_path}: {len(failures)} unit(s) failed to build ({names}); fix them before bundling")
    return index


def _check_entry(index_path: Path, position: int, raw: Any) -> dict[str, Any]:
    where = f"{index_path}: units[{position}]"
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: not an object")
    missing = [k for k in _ENTRY_KEYS if k not in raw]
    if missing:
        raise BundleError(f"{where} ({raw.get('unit', '?')}): lacks {', '.join(missing)}")
    unit, sha = raw["unit"], raw["sha256"]
    arch = raw["kernel"].get("arch") if isinstance(raw["kernel"], dict) else None
    if arch not in ARCHES:
        raise BundleError(f"{where} ({unit}): unknown arch {arch!r}")
    if raw["object"] != f"objects/{sha}.o":
        raise BundleError(f"{where} ({unit}): object {raw['object']!r} is not objects/<sha256>.o of its sha256")
    source = raw["source"]
    if not isinstance(source, dict) or not str(source.get("path", "")).startswith("sources/") or "sha256" not in source:
        raise BundleError(f"{where} ({unit}): source must name a sources/ path and its sha256")
    return {k: v for k, v in raw.items() if k not in _BUILD_ONLY_KEYS}


def _checked_file(build: Path, rel: str, sha256: str, size: int | None, unit: str) -> bytes:
    path = build / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (index.json names it for {unit})") from None
    except OSError as exc:
        raise BundleError(f"{path}: unreadable: {exc.strerror or exc}") from None
    if size is not None and len(data) != size:
        what = "truncated" if len(data) < size else "larger than recorded"
        raise BundleError(f"{path}: {what} ({len(data)} bytes, index.json says {size} for {unit})")
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise BundleError(f"{path}: sha256 {actual[:16]}... is not the {sha256[:16]}... index.json records for {unit}")
    return data


def read_build_dir(path: Path) -> BuildDir:
    """The checked contents of a build directory; any mismatch is a BundleError naming the file."""
    index_path = path / "index.json"
    index = _load_index(path)
    entries: dict[str, dict[str, Any]] = {}
    files: dict[str, bytes] = {}
    for position, raw in enumerate(index["units"]):
        entry = _check_entry(index_path, position, raw)
        unit = entry["unit"]
        if unit in entries:
            raise BundleError(f"{index_path}: unit {unit} listed twice")
        entries[unit] = entry
        if entry["object"] not in files:
            files[entry["object"]] = _checked_file(path, entry["object"], entry["sha256"], entry["size"], unit)
        source = entry["source"]
        if source["path"] not in files:
            files[source["path"]] = _checked_file(path, source["path"], source["sha256"], None, unit)
    for sub in ("objects", "sources"):
        for stray in sorted((path / sub).glob("*")) if (path / sub).is_dir() else []:
            if f"{sub}/{stray.name}" not in files:
                raise BundleError(f"{stray}: not named by {index_path}; the index does not match the files")
    inputs = index.get("inputs")
    if inputs is not None and not _inputs_shaped(inputs):
        raise BundleError(f"{index_path}: inputs must hold matrix, toolchain, headers and sources")
    skipped = {}
    for s in index.get("skipped") or []:
        if not (isinstance(s, dict) and isinstance(s.get("unit"), str) and s.get("arch") in ARCHES
                and isinstance(s.get("reason"), str)):
            raise BundleError(f"{index_path}: each skipped unit needs unit, arch (x86_64 or aarch64) and reason")
        skipped[s["unit"]] = s
    return BuildDir(path, entries, files, inputs, skipped)


def _inputs_shaped(inputs: Any) -> bool:
    return (isinstance(inputs, dict) and isinstance(inputs.get("matrix"), dict)
            and isinstance(inputs.get("toolchain"), dict) and isinstance(inputs.get("headers"), list)
            and all(isinstance(h, dict) and {"name", "version", "arch"} <= h.keys() for h in inputs["headers"])
            and isinstance(inputs.get("sources"), dict))


def _join_inputs(builds: list[BuildDir]) -> dict[str, Any] | None:
    """Shards of one matrix share its hash, toolchain and stitched sources; their headers are
    united. Mixing shards with and without inputs would give a provenance that misses some."""
    known = [b for b in builds if b.inputs is not None]
    if not known:
        return None
    if len(known) != len(builds):
        lacking = next(b for b in builds if b.inputs is None)
        raise BundleError(f"{lacking.path / 'index.json'}: records no inputs, unlike {known[0].path}; "
                          "rebuild it so the provenance names every input")
    first = known[0]
    headers: dict[tuple[str, str, str], dict[str, Any]] = {}
    sources: dict[str, str] = {}
    for build in known:
        inputs = build.inputs or {}
        for key in ("matrix", "toolchain"):
            if inputs[key] != (first.inputs or {})[key]:
                raise BundleError(f"{build.path} and {first.path} differ in {key}: not shards of one build")
        for h in inputs["headers"]:
            if headers.setdefault((h["name"], h["version"], h["arch"]), h) != h:
                raise BundleError(f"{build.path}: header package {h['name']}={h['version']} recorded differently "
                                  f"in another shard")
        for program, sha in inputs["sources"].items():
            if sources.setdefault(program, sha) != sha:
                raise BundleError(f"{build.path}: stitched source of {program} differs from another shard's")
    return {**(first.inputs or {}), "headers": [headers[k] for k in sorted(headers)],
            "sources": dict(sorted(sources.items()))}


def join(builds: list[BuildDir]) -> Bundle:
    """One bundle from several build directories; a unit built differently twice is a BundleError."""
    bundle = Bundle()
    for build in builds:
        for unit, entry in build.entries.items():
            seen = bundle.entries.get(unit)
            if seen is None:
                bundle.entries[unit] = entry
                bundle.origin[unit] = build.path
            elif seen != entry:
                detail = (f"sha256 {seen['sha256'][:16]}... vs {entry['sha256'][:16]}..."
                          if seen["sha256"] != entry["sha256"] else "same object, different index entries")
                raise BundleError(f"unit {unit} differs between {bundle.origin[unit]} and {build.path} ({detail})")
        bundle.skipped.update(build.skipped)
        for rel, data in build.files.items():
            if bundle.files.setdefault(rel, data) != data:
                raise BundleError(f"{build.path / rel}: differs from the file of the same name in another shard")
    if not bundle.entries:
        raise BundleError("nothing to bundle: " + ", ".join(str(b.path) for b in builds) + " hold no units")
    bundle.inputs = _join_inputs(builds)
    return bundle
