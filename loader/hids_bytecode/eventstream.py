"""Every family's events from one process: `with stream(["process", "file"], format="ecs") as s: ...`

Each program is read from its pins when loaded (this process then holds every such program's
consumer lock, docs/PINS.md, and writes its own tgid into each `config`, cleared on close), else
loaded and attached for the stream's lifetime. Each ring buffer gets a libbpf `ring_buffer`, each
perf buffer (kernels < 5.8) a `perf_buffer`, and one epoll waits on all of them. A round reads at
most _BUDGET records per ring (libbpf stops when the callback says so), so a flooded ring can
neither starve the others nor keep the process inside libbpf, where signals are held, for long.

Ordering: each ring delivers its events in the order they were committed. The stream merges the
rings by the kernel timestamp (`hdr.ts_ns`, CLOCK_MONOTONIC): an event is held until it is
`window_ms` old, and events are released in timestamp order. An event that reaches user space
later than `window_ms` after its timestamp (a stalled reader, a preempted producer) is released
at once and may precede an earlier-released later one; nothing is dropped for being late.

A pinned program that is unloaded (its pin directory gone or replaced) is dropped from the stream
and picked up again when it is loaded again: agents survive `unload` + `load`. Counters
(`counters()`) are the kernel's emitted/dropped per type; `lost` sums what was lost, and unless
`lost_records=False` each loss is also yielded as `{"event": "lost", ...}`.
"""

from __future__ import annotations

import ctypes
import heapq
import os
import select
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import interrupts
from . import libbpf as lb
from .attach import LoadedObject, load_object, set_agent_tgid
from .btf_layout import Schema, schema_from_object
from .errors import HidsError, Interrupted, InvalidArgument, LoadError, NotLoaded
from .events import PERF_EVENT_ARRAY, RINGBUF, map_info, read_counters
from .hostinfo import HostFacts
from .identity import CgroupResolver, host_name
from .manifest import load_manifest
from .mounts import ensure_bpf_filesystems
from .pins import PinTree, check_name, locked_tree, pin_dir
from .schema_map import FORMATS, SCHEMA_VERSION, convert
from .walltime import WallClock, rfc3339

__all__ = ["Stream", "Source", "Event"]

Event = dict[str, Any]
_PERF_PAGES = 64
_POLL_MS = 20
_BUDGET = 2048  # records per ring per round
_EAGAIN = 11
_HOUSEKEEPING_NS = 1_000_000_000  # counters, lost reports, reload checks: once a second


@dataclass
class Source:
    """One program's maps as this stream reads them."""

    program: str
    schema: Schema | None  # set before any event is read
    events_fd: int
    counters_fd: int | None = None
    config_fd: int | None = None
    holder_fd: int | None = None  # pinned: the consumer lock on <program>/
    pin_inode: tuple[int, int] | None = None  # pinned: the directory the lock is on
    loaded: LoadedObject | None = None  # loaded for the stream's lifetime
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def pinned(self) -> bool:
        return self.holder_fd is not None

    def close(self, lib: lb.Libbpf) -> None:
        if self.pinned:
            if self.config_fd is not None:
                try:
                    set_agent_tgid(lib, self.config_fd, 0)  # the consumer goes: filter nothing
                except LoadError:
                    pass
            for fd in (self.events_fd, self.counters_fd, self.config_fd, self.holder_fd):
                if fd is not None:
                    os.close(fd)
            self.holder_fd = None
        elif self.loaded is not None:
            self.loaded.close()
            self.loaded = None


class Stream:
    """Iterate to get events (dicts in `format`); use as a context manager, or call close()."""

    def __init__(self, programs: list[str] | None = None, format: str = "raw", options: Any = None,
                 facts: HostFacts | None = None, window_ms: int = 50, lost_records: bool = True) -> None:
        from . import api  # api imports this module for watch(); resolved at call time
        if format not in FORMATS:
            raise InvalidArgument(f"unknown format {format!r}: one of {', '.join(FORMATS)}")
        self.options = options or api.Options()
        self.format = format
        self.window_ns = max(0, window_ms) * 1_000_000
        self.lost_records = lost_records
        self.programs = [check_name(p) for p in (programs or load_manifest(trust=self.options.trust).programs)]
        self.lost: dict[tuple[str, str], int] = {}
        self._lib = lb.get(echo=self.options.verbose)
        self._facts = facts or api.host_facts(self.options)
        self._clock = WallClock()
        self._cgroups = CgroupResolver()
        self._host = host_name()
        self._sources: dict[str, Source] = {}
        self._schemas: dict[str, Schema] = {}
        self._pending: list[tuple[int, int, Event]] = []
        self._ready: list[Event] = []
        self._seq = 0
        self._buffers: list[tuple[int, Any, Any]] = []  # (handle, consume, free)
        self._taken = 0  # records read from the ring being consumed, this round
        self._backlog = False  # a ring had more than a round's budget
        self._callbacks: list[Any] = []
        self._epoll: select.epoll | None = None
        self._last_housekeeping = 0
        self._closed = False
        ensure_bpf_filesystems()
        try:
            self._open_all()
            self._rebuild_buffers()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------- opening
    def _open_all(self) -> None:
        from . import api
        objects = {}
        for program in self.programs:
            choice = api.choose(program, self._facts, self.options)
            objects[program] = (*api.object_for(choice, self._facts), choice.entry.unit)
        # Pins first: this process is the agent (its events dropped) as early as it can be.
        self._sources.update(self._open_pinned(self.programs))
        for program, (data, path, _) in objects.items():
            with interrupts.deferred():
                self._schemas[program] = schema_from_object(self._lib, data, str(path))
            if program in self._sources:
                self._sources[program].schema = self._schemas[program]
        for program in self.programs:
            if program not in self._sources:
                data, _, unit = objects[program]
                self._sources[program] = self._load_for_run(program, data, unit)

    def _open_pinned(self, programs: list[str]) -> dict[str, Source]:
        """Under the tree's lock: hold every loaded program of `programs` (all or none: Busy names
        the holder of the first one taken), open its maps and put this process's tgid in config."""
        opened: dict[str, Source] = {}
        try:
            with locked_tree(create=False) as tree, interrupts.deferred():
                try:
                    for program in programs:
                        if tree.loaded(program):
                            opened[program] = self._open_one(tree, program)
                except BaseException:
                    for source in opened.values():
                        source.close(self._lib)
                    raise
        except NotLoaded:
            return {}
        return opened

    def _open_one(self, tree: PinTree, program: str) -> Source:
        holder = tree.hold(program)
        st = os.fstat(holder)
        fds: dict[str, int] = {}
        try:
            maps = tree.path / program / "maps"
            for name in ("events", "counters", "config"):
                if not (maps / name).exists():
                    if name == "events":
                        raise LoadError(f"{program} is loaded but has no pinned `events` map under {maps}")
                    continue
                fd = self._lib.bpf_obj_get(str(maps / name).encode())
                if fd < 0:
                    raise LoadError(f"cannot open pinned map {maps / name}: {self._lib.strerror(fd)}")
                fds[name] = fd
            if "config" in fds:
                set_agent_tgid(self._lib, fds["config"], os.getpid())
        except BaseException:
            for fd in [*fds.values(), holder]:
                os.close(fd)
            raise
        return Source(program, self._schemas.get(program), fds["events"], fds.get("counters"), fds.get("config"),
                      holder, (st.st_dev, st.st_ino))

    def _load_for_run(self, program: str, data: bytes, label: str) -> Source:
        # This process is the agent and holds the only references: the object dies with it.
        loaded = load_object(self._lib, data, label, agent_tgid=os.getpid(), btf_path=self.options.btf,
                             require_maps=("events",))
        counters = loaded.map_fd("counters") if "counters" in loaded.maps else None
        return Source(program, self._schemas[program], loaded.map_fd("events"), counters, loaded=loaded)

    # ----------------------------------------------------------------------------- buffers
    def _rebuild_buffers(self) -> None:
        """A ring_buffer per ring, a perf_buffer per perf array, one epoll over them all."""
        self._free_buffers()
        lib = self._lib
        self._epoll = select.epoll()
        for source in self._sources.values():
            kind = map_info(lib, source.events_fd).type
            if kind == RINGBUF:
                callback = lb.RINGBUF_SAMPLE_FN(self._on_ring(source))
                self._callbacks.append(callback)
                with interrupts.deferred():
                    handle = lib.ring_buffer__new(source.events_fd, callback, None, None)
                if not handle:
                    raise LoadError(f"cannot open the ring buffer of {source.program}: {lb.errno_text()[1]}")
                self._buffers.append((handle, lib.ring_buffer__consume, lib.ring_buffer__free))
                self._epoll.register(lib.ring_buffer__epoll_fd(handle), select.EPOLLIN)
            elif kind == PERF_EVENT_ARRAY:
                sample = lb.PERF_SAMPLE_FN(self._on_perf(source))
                lost = lb.PERF_LOST_FN(self._on_perf_lost(source))
                self._callbacks += [sample, lost]
                with interrupts.deferred():
                    handle = lib.perf_buffer__new(source.events_fd, _PERF_PAGES, sample, lost, None, None)
                if not handle:
                    raise LoadError(f"cannot open the perf buffer of {source.program}: {lb.errno_text()[1]}")
                self._buffers.append((handle, lib.perf_buffer__consume, lib.perf_buffer__free))
                self._epoll.register(lib.perf_buffer__epoll_fd(handle), select.EPOLLIN)
            else:
                raise LoadError(f"{source.program}: map `events` has type {kind}, expected RINGBUF or PERF_EVENT_ARRAY")

    def _free_buffers(self) -> None:
        with interrupts.deferred():
            for handle, _, free in self._buffers:
                free(handle)
        self._buffers = []
        self._callbacks = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _on_ring(self, source: Source) -> Any:
        def on_sample(_ctx: int, data: int, size: int) -> int:
            self._accept(source, ctypes.string_at(data, size))
            self._taken += 1
            return -_EAGAIN if self._taken >= _BUDGET else 0  # < 0: libbpf stops after this record
        return on_sample

    def _on_perf(self, source: Source) -> Any:
        def on_sample(_ctx: int, _cpu: int, data: int, size: int) -> None:
            self._accept(source, ctypes.string_at(data, size))
        return on_sample

    def _on_perf_lost(self, source: Source) -> Any:
        def on_lost(_ctx: int, cpu: int, count: int) -> None:
            self._report_lost(source.program, "*", count, {"source": "perf_buffer", "cpu": cpu})
        return on_lost

    # ------------------------------------------------------------------------------ events
    def _accept(self, source: Source, data: bytes) -> None:
        assert source.schema is not None  # _open_all sets it before any buffer is polled
        record = source.schema.decode(data)
        hdr = record.get("hdr")
        ts = hdr.get("ts_ns", 0) if isinstance(hdr, dict) else 0
        self._enrich(record, source.program, ts)
        self._seq += 1
        heapq.heappush(self._pending, (ts, self._seq, record))

    def _enrich(self, record: Event, program: str, ts: int) -> None:
        wall = self._clock.wall_ns(ts)
        record["time_ns"] = wall
        record["time"] = rfc3339(wall)
        record["program"] = program
        record["schema_version"] = SCHEMA_VERSION
        record["host"] = {"name": self._host}
        hdr = record.get("hdr")
        container = self._cgroups.container(hdr.get("cgroup_id", 0)) if isinstance(hdr, dict) else None
        if container is not None:
            record["container"] = {"id": container.id, **({"runtime": container.runtime} if container.runtime else {})}

    def _report_lost(self, program: str, kind: str, count: int, extra: dict[str, Any]) -> None:
        self.lost[(program, kind)] = self.lost.get((program, kind), 0) + count
        if self.lost_records:
            now = self._clock.wall_ns(WallClock.now_ktime_ns())
            self._ready.append({"event": "lost", "program": program, "type": kind, "count": count,
                                "time": rfc3339(now), "time_ns": now, "schema_version": SCHEMA_VERSION,
                                "host": {"name": self._host}, **extra})

    def _release(self, flush: bool = False) -> None:
        horizon = WallClock.now_ktime_ns() - self.window_ns
        while self._pending and (flush or self._pending[0][0] <= horizon):
            self._ready.append(convert(heapq.heappop(self._pending)[2], self.format))

    def __iter__(self) -> Iterator[Event]:
        """Events as they become due, forever (until close())."""
        while not self._closed:
            yield from self.drain()
            self.poll()

    def drain(self) -> list[Event]:
        """The events due now, without waiting (for agents with their own loop around poll())."""
        ready, self._ready = self._ready, []
        return ready

    def poll(self, timeout_ms: int = _POLL_MS) -> None:
        """Wait up to `timeout_ms` for events, drain every buffer, release what is due."""
        if self._epoll is not None and self._buffers:
            self._epoll.poll(0 if self._backlog else timeout_ms / 1000)
            self._backlog = False
            # The sample callbacks run inside consume: a signal is held until it returns (interrupts.py).
            with interrupts.deferred():
                for handle, consume, _ in self._buffers:
                    self._taken = 0
                    rc = consume(handle)
                    if rc == -_EAGAIN:  # the budget ran out: more is waiting in that ring
                        self._backlog = True
                    elif rc < 0 and rc != -4:  # -EINTR: consume again next round
                        raise LoadError(f"reading events failed: {self._lib.strerror(rc)}")
        else:
            select.select([], [], [], timeout_ms / 1000)  # every pinned program is gone: wait for a reload
        now = WallClock.now_ktime_ns()
        if now - self._last_housekeeping >= _HOUSEKEEPING_NS:
            self._last_housekeeping = now
            self._clock.refresh()
            self._check_dropped()
            self._check_reloads()
        self._release()

    # ------------------------------------------------------------------------ housekeeping
    def counters(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per program and event type, the kernel's `emitted` and `dropped` totals."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for program, source in self._sources.items():
            if source.counters_fd is not None:
                assert source.schema is not None  # _open_all sets it before the stream runs
                with interrupts.deferred():
                    out[program] = read_counters(self._lib, source.counters_fd, source.schema)
        return out

    def _check_dropped(self) -> None:
        for program, counts in self.counters().items():
            source = self._sources[program]
            for kind, values in counts.items():
                dropped = values.get("dropped", 0)
                previous = source.dropped.get(kind)
                source.dropped[kind] = dropped
                if previous is not None and dropped > previous:
                    self._report_lost(program, kind, dropped - previous, {"source": "counters"})

    def _check_reloads(self) -> None:
        """Pinned programs that were unloaded leave; programs loaded (again) since join."""
        changed = False
        for program, source in list(self._sources.items()):
            if not source.pinned:
                continue
            try:
                st = os.lstat(pin_dir(program))
                current = (st.st_dev, st.st_ino)
            except OSError:
                current = None
            if current != source.pin_inode:
                with interrupts.deferred():
                    self._drain()
                    source.close(self._lib)
                del self._sources[program]
                changed = True
        missing = [p for p in self.programs if p not in self._sources]
        if missing:
            try:
                joined = self._open_pinned(missing)
            except Interrupted:
                raise
            except HidsError:  # a tree being rebuilt, a consumer that got there first: next second
                joined = {}
            self._sources.update(joined)
            changed = changed or bool(joined)
        if changed:
            self._rebuild_buffers()
            for source in self._sources.values():
                source.dropped = {}

    def _drain(self) -> None:
        for handle, consume, _ in self._buffers:
            self._taken = 0
            consume(handle)

    @property
    def sources(self) -> dict[str, str]:
        """program -> "pinned" | "loaded for this stream"; absent: unloaded, waiting for a reload."""
        return {p: "pinned" if s.pinned else "loaded for this stream" for p, s in self._sources.items()}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._free_buffers()
        with interrupts.deferred():
            for source in self._sources.values():
                source.close(self._lib)
        self._sources.clear()
        self._cgroups.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
