"""The one load path: `load_object` opens an object through libbpf, loads it, writes the agent's
tgid into `config`, attaches by group policy and pins (into a staging directory the caller renames
into place: pins.py), and undoes all of it when a step fails or a signal arrives; the returned
`LoadedObject` is a context manager whose exit detaches and frees what this process holds (pins
stay). `load`, `watch`/`stream` and the VM guest check all go through it.

Groups are `<group>__<hook>` hooks (BPF functions); per docs/DESIGN.md the kprobe hooks are tried first,
then the tracepoint hooks, and one hook type is used only when all its hooks attach."""

from __future__ import annotations

import ctypes
import errno
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import interrupts
from . import libbpf as lb
from .errors import AttachError, LoadError, NotPermitted
from .procstat import start_ticks
from .sections import HOOK_TYPE_ORDER, hook_type_of

__all__ = ["ProgramReport", "LoadedObject", "load_object", "open_and_load", "attach_all", "write_agent_tgid",
           "set_agent_tgid", "pin_all"]

# Errors meaning the hook does not exist on this kernel, as opposed to a failure worth investigating.
_UNSUPPORTED = {errno.ENOENT, errno.EOPNOTSUPP, errno.ENODEV, errno.ENXIO, 524}


@dataclass
class ProgramReport:
    name: str
    section: str
    group: str
    hook_type: str
    status: str = "pending"  # attached | not supported by this kernel | failed | skipped
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"program": self.name, "section": self.section, "group": self.group, "hook_type": self.hook_type,
                "status": self.status, "message": self.message}


@dataclass
class LoadedObject:
    """An object loaded into the kernel and owned by this process. Closing it (or leaving its
    `with` block) detaches its links and frees its programs and maps; pinned ones stay in bpffs."""

    lib: lb.Libbpf
    obj: int
    programs: dict[str, int] = field(default_factory=dict)  # name -> struct bpf_program *
    maps: dict[str, int] = field(default_factory=dict)  # name -> struct bpf_map *
    links: dict[str, int] = field(default_factory=dict)  # program name -> struct bpf_link *
    reports: list[ProgramReport] = field(default_factory=list)

    def map_fd(self, name: str) -> int:
        fd: int = self.lib.bpf_map__fd(self.maps[name])
        return fd

    def close(self) -> None:
        for link in self.links.values():
            self.lib.bpf_link__destroy(link)
        self.links.clear()
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = 0

    def __enter__(self) -> LoadedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        with interrupts.deferred():
            self.close()


def _log(collected: list[tuple[str, str]]) -> str:
    return "\n".join(text for _, text in collected)


def _last_libbpf_line(collected: list[tuple[str, str]]) -> str:
    lines = [line.strip() for _, text in collected for line in text.splitlines() if line.strip()]
    interesting = [line for line in lines if "verifier" not in line and not line.startswith("--")]
    return (interesting or lines or ["no message from libbpf"])[-1]


_PROG_FAILED = re.compile(r"prog '([^']+)': BPF program load failed: (.*)")
_INSN = re.compile(r"^\d+: \(")


def _verifier_reason(collected: list[tuple[str, str]]) -> str | None:
    """`program X rejected by the verifier: <first complaint after the last instruction>`."""
    lines = [line for _, text in collected for line in text.splitlines()]
    for index, line in enumerate(lines):
        failed = _PROG_FAILED.search(line)
        if not failed:
            continue
        log = []
        for entry in lines[index + 1:]:
            if "END PROG LOAD LOG" in entry:
                break
            log.append(entry)
        last_insn = max((i for i, line in enumerate(log) if _INSN.match(line)), default=-1)
        complaints = (line.strip() for line in log[last_insn + 1:] if line.strip() and not line.startswith(";"))
        complaint = next(complaints, failed.group(2))
        return f"program {failed.group(1)} rejected by the verifier: {complaint}"
    return None


def open_and_load(lib: lb.Libbpf, data: bytes, label: str, btf_path: str | None = None) -> LoadedObject:
    """Open the (already hash-checked) bytes from memory and load them into the kernel; `btf_path`
    is the kernel BTF CO-RE relocates against instead of /sys/kernel/btf/vmlinux."""
    buf = ctypes.create_string_buffer(data, len(data))
    opts = None
    if btf_path:
        opts = lb.OBJECT_OPEN_OPTS(sz=ctypes.sizeof(lb.OBJECT_OPEN_OPTS), btf_custom_path=btf_path.encode())
    with lb.capture() as collected:
        obj = lib.bpf_object__open_mem(buf, len(data), ctypes.byref(opts) if opts else None)
    if not obj:
        raise LoadError(f"{label}: libbpf cannot open the object: {_last_libbpf_line(collected)}", _log(collected))
    loaded = LoadedObject(lib, obj)
    prog = lib.bpf_object__next_program(obj, None)
    while prog:
        loaded.programs[lib.bpf_program__name(prog).decode()] = prog
        prog = lib.bpf_object__next_program(obj, prog)
    bmap = lib.bpf_object__next_map(obj, None)
    while bmap:
        loaded.maps[lib.bpf_map__name(bmap).decode()] = bmap
        bmap = lib.bpf_object__next_map(obj, bmap)
    with lb.capture() as collected:
        rc = lib.bpf_object__load(obj)
    if rc != 0:
        loaded.close()
        if rc == -errno.EPERM and os.geteuid() != 0:
            raise NotPermitted(f"{label}: loading BPF needs root (CAP_BPF, CAP_PERFMON); run hids-bytecode as root")
        reason = _verifier_reason(collected) or f"load failed ({lib.strerror(rc)}): {_last_libbpf_line(collected)}"
        raise LoadError(f"{label}: {reason} (--verbose shows libbpf's full log)", _log(collected))
    return loaded


# The inode of the initial pid namespace (PROC_PID_INIT_INO): only there are pids the kernel's own.
_INIT_PID_NS_INO = 0xEFFFFFFC


def _check_host_pids() -> None:
    try:
        initial = os.stat("/proc/self/ns/pid").st_ino == _INIT_PID_NS_INO
    except OSError:
        initial = False
    if not initial:
        raise LoadError("the agent filter needs the kernel's pid numbers, and this process runs in a pid namespace "
                        "(a container without the host's pids): run it in the host's pid namespace (hostPID)")


def set_agent_tgid(lib: lb.Libbpf, config_fd: int, tgid: int) -> None:
    """Put `tgid` first in `config`[0] (0: drop nothing) and, where the value has room, its start
    time: the kernel side drops that process's own events, and never those of another process
    that is later given the same pid (docs/PINS.md). Refused inside a pid namespace, where a
    pid names another process than the probes see."""
    if tgid:
        _check_host_pids()
    info = lb.MAP_INFO()
    length = ctypes.c_uint32(ctypes.sizeof(info))
    rc = lib.bpf_obj_get_info_by_fd(config_fd, ctypes.byref(info), ctypes.byref(length))
    if rc != 0:
        raise LoadError(f"cannot read the config map's info: {lib.strerror(rc)}")
    value = ctypes.create_string_buffer(max(info.value_size, 4))
    key = ctypes.c_uint32(0)
    lib.bpf_map_lookup_elem(config_fd, ctypes.byref(key), value)  # a fresh array reads as zeroes
    ctypes.c_uint32.from_buffer(value).value = tgid
    if info.value_size >= 16:
        ticks = start_ticks(tgid) if tgid else 0
        if ticks is None:
            raise LoadError(f"agent pid {tgid}: no such process")
        ctypes.c_uint64.from_buffer(value, 8).value = ticks
    rc = lib.bpf_map_update_elem(config_fd, ctypes.byref(key), value, 0)
    if rc != 0:
        raise LoadError(f"cannot write the agent tgid into config: {lib.strerror(rc)}")


def write_agent_tgid(loaded: LoadedObject, tgid: int | None = None) -> None:
    """`set_agent_tgid` on a loaded object; `tgid` None is this process (for a consumer that
    lives as long as the object, never for one that pins and exits)."""
    if "config" in loaded.maps:
        set_agent_tgid(loaded.lib, loaded.map_fd("config"), os.getpid() if tgid is None else tgid)


def _attach_one(loaded: LoadedObject, report: ProgramReport) -> bool:
    lib = loaded.lib
    with lb.capture() as collected:
        link = lib.bpf_program__attach(loaded.programs[report.name])
    if link:
        loaded.links[report.name] = link
        report.status, report.message = "attached", ""
        return True
    err, text = lb.errno_text()
    detail = _last_libbpf_line(collected) if collected else text
    report.status = "not supported by this kernel" if err in _UNSUPPORTED else "failed"
    report.message = detail
    return False


def attach_all(loaded: LoadedObject) -> list[ProgramReport]:
    """Attach every group by hook type policy; raise only when nothing at all attached."""
    lib = loaded.lib
    groups: dict[str, list[ProgramReport]] = {}
    for name, prog in loaded.programs.items():
        section = lib.bpf_program__section_name(prog).decode()
        group = name.split("__", 1)[0]
        groups.setdefault(group, []).append(ProgramReport(name, section, group, hook_type_of(section)))
    for group, reports in groups.items():
        types = [t for t in HOOK_TYPE_ORDER if any(r.hook_type == t for r in reports)]
        if len(types) == 1:
            for r in reports:
                _attach_one(loaded, r)
            continue
        chosen = None
        for hook_type in types:
            members = [r for r in reports if r.hook_type == hook_type]
            if all([_attach_one(loaded, r) for r in members]):
                chosen = hook_type
                break
            for r in members:  # a hook type is all or nothing
                link = loaded.links.pop(r.name, None)
                if link:
                    lib.bpf_link__destroy(link)
                    r.status, r.message = "skipped", "detached: another hook of its type failed"
        for r in reports:
            if r.status == "pending":
                r.status = "skipped"
                r.message = f"group {group} uses its {chosen} hooks" if chosen else "an earlier hook type failed"
    loaded.reports = [r for rs in groups.values() for r in rs]
    if loaded.programs and not loaded.links:
        first = next((r for r in loaded.reports if r.message), None)
        raise AttachError("no program attached" + (f"; {first.name}: {first.message}" if first else ""))
    return loaded.reports


def pin_all(loaded: LoadedObject, staging: Path) -> None:
    """Pin maps, programs and links under `staging`/{maps,progs,links}/ (made by the caller)."""
    lib = loaded.lib
    # bpffs refuses dots in names; those are libbpf's internal .bss/.data/.rodata maps, not ours.
    steps = [(lib.bpf_map__pin, bmap, staging / "maps" / name) for name, bmap in loaded.maps.items() if "." not in name]
    steps += [(lib.bpf_program__pin, prog, staging / "progs" / name) for name, prog in loaded.programs.items()]
    steps += [(lib.bpf_link__pin, link, staging / "links" / name) for name, link in loaded.links.items()]
    for fn, ptr, path in steps:
        with lb.capture() as collected:
            rc = fn(ptr, str(path).encode())
        if rc != 0:
            raise LoadError(f"cannot pin {path}: {lib.strerror(rc)} {_last_libbpf_line(collected)}", _log(collected))


def load_object(lib: lb.Libbpf, data: bytes, label: str, *, agent_tgid: int, btf_path: str | None = None,
                attach: bool = True, pin_into: Path | None = None, require_maps: Iterable[str] = ()) -> LoadedObject:
    """Open and load the (hash-checked) `data`, give `config` the agent `agent_tgid` (0: filter
    nothing), then attach (unless `attach` is false) and pin under `pin_into` (when given).

    SIGINT/SIGTERM are held while libbpf runs and act between steps (Interrupted, via the caller's
    handler); on that or any failure every step done so far is undone before the error propagates,
    so the caller gets a complete object or nothing. `require_maps` missing: LoadError."""
    loaded: LoadedObject | None = None
    try:
        with interrupts.deferred():
            loaded = open_and_load(lib, data, label, btf_path)
            interrupts.check()
            missing = [name for name in require_maps if name not in loaded.maps]
            if missing:
                raise LoadError(f"{label} has no `{missing[0]}` map (docs/DESIGN.md)")
            write_agent_tgid(loaded, agent_tgid)
            if attach:
                attach_all(loaded)
                interrupts.check()
            if pin_into is not None:
                pin_all(loaded, pin_into)
                interrupts.check()
    except BaseException:
        if loaded is not None:  # a signal held until the block's end lands here too
            with interrupts.deferred():
                loaded.close()
        raise
    return loaded
