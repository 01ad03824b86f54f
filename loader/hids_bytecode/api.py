"""The loader's Python API: what the CLI runs, usable by an agent directly.

    facts = hostinfo.gather(); choice = choose("file", facts)
    result = load("file")            # select, hash-check, load, attach, pin
    for event in watch("file"): ...  # decoded events as dicts; this process is the ring's one consumer
    with stream(["process", "file"], format="ecs") as s:  # several families, one process (eventstream.py)
        for event in s: ...
    unload("file")

SIGINT/SIGTERM are held while libbpf runs and during pinning (interrupts.py), then act: a load
is complete or absent, never half-pinned. The pin layout and the agent contract: docs/PINS.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import AlreadyLoaded, InvalidArgument, LoadError
from .hostinfo import HostFacts, gather
from .manifest import Manifest, load_manifest
from .records import Record
from .selection import Choice, select
from .trust import DEFAULT_POLICY, TrustPolicy

# What loads, attaches and streams (libbpf, ctypes, the pin tree, the compilers) is imported
# where it is used: `select` starts without it (docs/THREAT_MODEL.md, "Start-up"); typing too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Final

    from .attach import ProgramReport
    from .eventstream import Stream

__all__ = ["Options", "DEFAULT_OPTIONS", "LoadResult", "choose", "object_for", "load", "unload", "watch", "stream",
           "host_facts"]


class Options(Record):
    __slots__ = ("debug", "strict", "runtime_compile", "backend", "verbose", "btf", "trust")

    def __init__(self, debug: bool = False, strict: bool = False, runtime_compile: bool = False,
                 backend: str = "libbpf", verbose: bool = False, btf: str | None = None,
                 trust: TrustPolicy = DEFAULT_POLICY) -> None:
        self.debug: Final = debug
        self.strict: Final = strict
        self.runtime_compile: Final = runtime_compile
        self.backend: Final = backend  # or "bpftool"
        self.verbose: Final = verbose  # copy libbpf's messages to stderr
        self.btf: Final = btf  # kernel BTF file for CO-RE when /sys/kernel/btf/vmlinux is absent
        self.trust: Final = trust  # whose signature the manifest needs (docs/SIGNING.md)


class LoadResult(Record):
    __slots__ = ("choice", "pins", "reports", "agent_pid")

    def __init__(self, choice: Choice, pins: Path, reports: list[ProgramReport] | None = None,
                 agent_pid: int = 0) -> None:
        self.choice: Final = choice
        self.pins: Final = pins
        self.reports: Final = [] if reports is None else reports
        self.agent_pid: Final = agent_pid  # what `config` holds: 0 filters nothing


    def as_dict(self) -> dict[str, Any]:
        return {**self.choice.as_dict(), "pins": str(self.pins), "agent_pid": self.agent_pid,
                "programs": [r.as_dict() for r in self.reports]}


DEFAULT_OPTIONS = Options()  # read-only: one instance serves every default argument


def host_facts(options: Options = DEFAULT_OPTIONS) -> HostFacts:
    """This host's facts; with `options.btf`, that file stands in for /sys/kernel/btf/vmlinux."""
    if options.btf is None:
        return gather()
    if not os.path.isfile(options.btf):
        raise InvalidArgument(f"--btf {options.btf}: not a regular file")
    return gather(btf_path=Path(options.btf))


def choose(program: str, facts: HostFacts | None = None, options: Options = DEFAULT_OPTIONS,
           manifest: Manifest | None = None) -> Choice:
    return select(manifest or load_manifest(trust=options.trust), facts or host_facts(options), program,
                  debug=options.debug, strict=options.strict, runtime_compile=options.runtime_compile)


def object_for(choice: Choice, facts: HostFacts) -> tuple[bytes, Path]:
    """The chosen object's bytes (hash-checked against the manifest) and where they came from."""
    if choice.runtime is not None:
        from .runtime_compile import compile_object
        return compile_object(choice.runtime, choice.entry, facts)
    from .integrity import read_verified
    return read_verified(choice.entry.object_path, choice.entry.sha256), choice.entry.object_path


def check_agent_pid(pid: int) -> int:
    """`pid` when it names a live process: the agent that will consume the events."""
    if not isinstance(pid, int) or pid <= 0:
        raise InvalidArgument(f"agent pid {pid!r} must be a positive integer")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        raise InvalidArgument(f"agent pid {pid} does not exist") from None
    except PermissionError:
        pass  # exists, owned by another user
    return pid


def load(program: str, options: Options = DEFAULT_OPTIONS, facts: HostFacts | None = None,
         agent_pid: int | None = None) -> LoadResult:
    """Select, hash-check, load, attach and pin `program`; the pins outlive this process.

    `config` gets `agent_pid` (an agent that will read the pins and must clear it when it stops,
    docs/PINS.md) or 0: never this process's pid, which dies and can be reused."""
    from . import interrupts
    from .mounts import ensure_bpf_filesystems
    from .pins import check_name, locked_tree
    check_name(program)
    tgid = 0 if agent_pid is None else check_agent_pid(agent_pid)
    facts = facts or host_facts(options)
    choice = choose(program, facts, options)
    data, _ = object_for(choice, facts)
    ensure_bpf_filesystems()
    with locked_tree(create=True) as tree:
        if tree.loaded(program):  # before any bpf() call
            raise AlreadyLoaded(f"{program} is already loaded (pins under {tree.path / program}); "
                                f"run `hids-bytecode unload {program}` first")
        with interrupts.deferred():
            staging = tree.staging(() if options.backend == "bpftool" else ("maps", "progs", "links"))
            try:
                reports = _load_into(tree.path / staging, data, choice, options, tgid)
                interrupts.check()
                root = tree.commit(staging, program)
            except BaseException:
                tree.remove(staging)
                raise
    return LoadResult(choice, root, reports, tgid)


def _load_into(staging: Path, data: bytes, choice: Choice, options: Options, tgid: int) -> list[ProgramReport]:
    from . import libbpf as lb
    from .attach import load_object, set_agent_tgid
    if options.backend == "bpftool":
        from .bpftool_backend import load_with_bpftool
        reports = load_with_bpftool(data, staging)
        config = staging / "maps" / "config"
        if tgid and config.exists():
            lib = lb.get(echo=options.verbose)
            fd = lib.bpf_obj_get(str(config).encode())
            if fd < 0:
                raise LoadError(f"cannot open pinned map {config}: {lib.strerror(fd)}")
            try:
                set_agent_tgid(lib, fd, tgid)
            finally:
                os.close(fd)
        return reports
    # The pins hold the object once this process's references go at the block's end.
    with load_object(lb.get(echo=options.verbose), data, choice.entry.unit, agent_tgid=tgid, btf_path=options.btf,
                     pin_into=staging) as loaded:
        return loaded.reports


def unload(program: str) -> list[Path]:
    """Remove `program`'s pins (which detaches it once no process holds it); the removed paths."""
    from . import interrupts
    from .pins import check_name, locked_tree
    check_name(program)
    with locked_tree(create=False) as tree, interrupts.deferred():
        return tree.unload(program)


def watch(program: str, options: Options = DEFAULT_OPTIONS, facts: HostFacts | None = None) -> Iterator[dict[str, Any]]:
    """Decoded events of `program`: from its pins when loaded, else from a load held by this iterator.

    This process becomes the ring's one consumer (Busy names the pid of another) and its tgid is
    the filter's while it reads; closing the iterator clears it."""
    from .pins import check_name
    check_name(program)
    with stream([program], "raw", options, facts) as events:
        yield from events


def stream(programs: list[str] | None = None, format: str = "raw", options: Options = DEFAULT_OPTIONS,
           facts: HostFacts | None = None, window_ms: int = 50, lost_records: bool = True,
           reader: str = "auto") -> Stream:
    """Events of several programs (default: every program of the manifest) from this process, as
    `raw`, `ecs` or `ocsf` dicts, merged in timestamp order within `window_ms` (eventstream.py).
    `reader`: ring buffers read through their mmap ("mmap", the default on x86_64) or libbpf's
    ring_buffer ("libbpf").

        with stream(["process", "file"], format="ecs") as s:
            for event in s: ...          # s.counters(), s.lost, s.sources
    """
    from .eventstream import Stream
    return Stream(programs, format, options, facts or host_facts(options), window_ms, lost_records, reader)

