"""The loader's Python API: what the CLI runs, usable by an agent directly.

    facts = hostinfo.gather(); choice = choose("file", facts)
    result = load("file")            # select, verify, load, attach, pin
    for event in watch("file"): ...  # decoded events as dicts
    unload("file")
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import libbpf as lb
from .attach import ProgramReport, attach_all, open_and_load, pin_all, write_agent_tgid
from .btf_layout import schema_from_btf, schema_from_object_file
from .bpftool_backend import load_with_bpftool
from .errors import LoadError
from .events import iter_events
from .hostinfo import HostFacts, gather
from .integrity import read_verified
from .manifest import Manifest, load_manifest
from .mounts import ensure_bpf_filesystems
from .pins import pin_dir, unpin
from .runtime_compile import compile_plan
from .selection import Choice, select

__all__ = ["Options", "LoadResult", "choose", "object_for", "load", "unload", "watch"]


@dataclass(frozen=True)
class Options:
    debug: bool = False
    strict: bool = False
    runtime_compile: bool = False
    backend: str = "libbpf"  # or "bpftool"
    verbose: bool = False  # copy libbpf's messages to stderr


@dataclass
class LoadResult:
    choice: Choice
    pins: Path
    reports: list[ProgramReport] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**self.choice.as_dict(), "pins": str(self.pins), "programs": [r.as_dict() for r in self.reports]}


def choose(program: str, facts: HostFacts | None = None, options: Options = Options(),
           manifest: Manifest | None = None) -> Choice:
    return select(manifest or load_manifest(), facts or gather(), program, debug=options.debug,
                  strict=options.strict, runtime_compile=options.runtime_compile)


def object_for(choice: Choice, facts: HostFacts) -> tuple[bytes, Path]:
    """The chosen object's bytes (hash-checked against the manifest) and where they came from."""
    if choice.runtime is not None:
        path = compile_plan(choice.runtime, choice.entry, facts)
        return path.read_bytes(), path
    return read_verified(choice.entry.object_path, choice.entry.sha256), choice.entry.object_path


def load(program: str, options: Options = Options(), facts: HostFacts | None = None) -> LoadResult:
    """Select, verify, load, attach and pin `program`; the pins outlive this process."""
    facts = facts or gather()
    choice = choose(program, facts, options)
    data, _ = object_for(choice, facts)
    ensure_bpf_filesystems()
    if options.backend == "bpftool":
        root, reports = load_with_bpftool(data, program)
        return LoadResult(choice, root, reports)
    lib = lb.get(echo=options.verbose)
    loaded = open_and_load(lib, data, choice.entry.unit)
    try:
        write_agent_tgid(loaded)
        reports = attach_all(loaded)
        root = pin_all(loaded, program)
    finally:
        loaded.close()
    return LoadResult(choice, root, reports)


def unload(program: str) -> list[Path]:
    return unpin(program)


def watch(program: str, options: Options = Options(), facts: HostFacts | None = None) -> Iterator[dict[str, Any]]:
    """Decoded events of `program`: from its pins when loaded, else from a load held by this iterator."""
    facts = facts or gather()
    choice = choose(program, facts, options)
    data, path = object_for(choice, facts)
    lib = lb.get(echo=options.verbose)
    pinned = pin_dir(program) / "maps"
    if (pinned / "events").exists():
        schema = schema_from_object_file(lib, path)
        events_fd = lib.bpf_obj_get(str(pinned / "events").encode())
        if events_fd < 0:
            raise LoadError(f"cannot open pinned map {pinned / 'events'}: {lib.strerror(events_fd)}")
        counters_fd = lib.bpf_obj_get(str(pinned / "counters").encode()) if (pinned / "counters").exists() else -1
        try:
            yield from iter_events(lib, events_fd, schema, counters_fd if counters_fd >= 0 else None)
        finally:
            for fd in (events_fd, counters_fd):
                if fd >= 0:
                    os.close(fd)
        return
    ensure_bpf_filesystems()
    loaded = open_and_load(lib, data, choice.entry.unit)
    try:
        if "events" not in loaded.maps:
            raise LoadError(f"{choice.entry.unit} has no `events` map (docs/DESIGN.md)")
        schema = schema_from_btf(lib, lib.bpf_object__btf(loaded.obj))
        write_agent_tgid(loaded)
        attach_all(loaded)
        counters = loaded.map_fd("counters") if "counters" in loaded.maps else None
        yield from iter_events(lib, loaded.map_fd("events"), schema, counters)
    finally:
        loaded.close()
