"""Every family's events from one process: `with stream(["process", "file"], format="ecs") as s: ...`

Each program is read from its pins when loaded (this process then holds every such program's
consumer lock, docs/PINS.md, and writes its own tgid into each `config`, cleared on close), else
loaded and attached for the stream's lifetime. On x86_64 each ring buffer is read through its
own mmap (ringbuf.py, no C callback per record): runs of records of one layout are unpacked in
one call and turned into records, or for drain_lines (watch) straight into JSON lines, by
comprehensions compiled for that layout (btf_layout.Batches); other records are decoded one by
one in place. Elsewhere a ring gets a libbpf `ring_buffer`, as each perf buffer (kernels < 5.8)
gets a `perf_buffer`; one epoll waits on all of them. A round reads at most _BUDGET records per
ring, so a flooded ring can neither starve the others nor keep the process inside libbpf, where
signals are held, for long.

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
import gc
import json
import math
import os
import select
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from . import interrupts
from . import libbpf as lb
from .attach import LoadedObject, load_object, set_agent_tgid
from .btf_layout import Batches, Schema, Seconds, schema_from_object
from .btf_layout import encode_json as _encode
from .errors import HidsError, Interrupted, InvalidArgument, LoadError, NotLoaded
from .events import PERF_EVENT_ARRAY, RINGBUF, map_info, read_counters
from .hostinfo import HostFacts
from .identity import CgroupResolver, host_name
from .manifest import load_manifest
from .mounts import ensure_bpf_filesystems
from .pins import PinTree, check_name, locked_tree, pin_dir
from .ringbuf import MMAP_SAFE, RingReader, Take
from .schema_map import FORMATS, SCHEMA_VERSION, convert
from .walltime import WallClock, rfc3339

__all__ = ["Stream", "Source", "Event", "READERS"]

Event = dict[str, Any]
Accept = Callable[[Any, int, int], None]  # (buffer, offset, length) of one record
READERS = ("auto", "mmap", "libbpf")  # how ring buffers are read: auto is mmap where it is safe
_MAX_CONTAINERS = 4096
_TYPE = struct.Struct("=I")  # hdr.type, a record's first member
_PERF_PAGES = 64
_POLL_MS = 20
_BUDGET = 2048  # records per ring per round
_EAGAIN = 11
_MAX_RECORD = 1 << 20  # longer ring records are no layout's: one by one
_HOUSEKEEPING_NS = 1_000_000_000  # counters, lost reports, reload checks: once a second


@contextmanager
def _no_collection() -> Iterator[None]:
    """The cyclic garbage collector paused for one poll. A round allocates thousands of records
    (acyclic dicts) that the merge then holds: each collection in between walks them all, which
    at saturation costs about as much as decoding them (invoke bench's event profile). Paused, they
    are freed by reference counting once the caller drops them, and walked at most once, by the
    first collection after the poll."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Runs(dict[tuple[int, int], "Take | None"]):
    """(type, ring length) -> the function taking runs of such records of one ring (ringbuf.py),
    made when first seen; None for a type without a compiled layout or a record shorter than its
    layout, which go one by one through the acceptor."""

    def __init__(self, stream: Stream, source: Source) -> None:
        super().__init__()
        self.stream, self.source = stream, source

    def __missing__(self, key: tuple[int, int]) -> Take | None:
        assert self.source.schema is not None  # _open_all sets it before any buffer is polled
        if len(self) >= 1024:  # lengths a layout never has, from a misbehaving program: bounded
            self.clear()
        layout = self.source.schema.events.get(key[0])
        size = key[1]
        take = None
        if layout is not None and layout.batches is not None and layout.size <= size < _MAX_RECORD:
            take = self.stream._take(self.source, layout.name, layout.batches, (size + 15) & ~7)
        self[key] = take
        return take


class _ContainerJson(dict[int, str]):
    """hdr.cgroup_id -> the record's `container` member as JSON text with its separator ("" when
    the cgroup is not a container's), as a compiled line puts it (btf_layout.Batches)."""

    def __init__(self, container: Callable[[int], dict[str, str] | None], first: bool) -> None:
        super().__init__()
        self.container, self.first = container, first

    def __missing__(self, cgroup_id: int) -> str:
        if len(self) >= _MAX_CONTAINERS:
            self.clear()
        found = self.container(cgroup_id) if cgroup_id else None
        text = "" if found is None else f'"container": {_encode(found)}, ' if self.first else \
            f', "container": {_encode(found)}'
        self[cgroup_id] = text
        return text


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
                 facts: HostFacts | None = None, window_ms: int = 50, lost_records: bool = True,
                 reader: str = "auto") -> None:
        from . import api  # api imports this module for watch(); resolved at call time
        if format not in FORMATS:
            raise InvalidArgument(f"unknown format {format!r}: one of {', '.join(FORMATS)}")
        if reader not in READERS:
            raise InvalidArgument(f"unknown ring reader {reader!r}: one of {', '.join(READERS)}")
        if reader == "mmap" and not MMAP_SAFE:
            raise InvalidArgument("reader 'mmap' needs x86_64 and a 64-bit Python (ring positions are read "
                                  "without barriers): use 'auto' or 'libbpf'")
        self.mmap_rings = reader != "libbpf" and MMAP_SAFE
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
        self._pending: list[tuple[int, int, Any]] = []  # (ts, arrival, event or JSON line), sorted when released
        self._ready: list[Any] = []
        self._arrival = [0]  # the next record's arrival number
        self._lines = False  # read as JSON lines (drain_lines)
        self._seconds = Seconds()
        self._containers: dict[int, dict[str, str] | None] = {}
        # hdr.cgroup_id -> its container member as JSON text, with the separator before or after it
        self._container_json = (_ContainerJson(self._container, first=True),
                                _ContainerJson(self._container, first=False))
        self._buffers: list[tuple[int, Any, Any]] = []  # (handle, consume, free)
        self._rings: list[tuple[RingReader, Accept, _Runs]] = []
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
            info = map_info(lib, source.events_fd)
            kind = info.type
            if kind == RINGBUF and self.mmap_rings:
                try:
                    self._rings.append((RingReader(source.events_fd, info.max_entries), self._acceptor(source),
                                        _Runs(self, source)))
                except OSError as exc:
                    raise LoadError(f"cannot map the ring buffer of {source.program}: {exc.strerror or exc}") from None
                self._epoll.register(source.events_fd, select.EPOLLIN)  # readable while records wait
            elif kind == RINGBUF:
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
        for ring, _, _ in self._rings:
            ring.close()
        self._rings = []
        self._buffers = []
        self._callbacks = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None

    def _on_ring(self, source: Source) -> Any:
        accept = self._acceptor(source)

        def on_sample(_ctx: int, data: int, size: int) -> int:
            accept(ctypes.string_at(data, size), 0, size)
            self._taken += 1
            return -_EAGAIN if self._taken >= _BUDGET else 0  # < 0: libbpf stops after this record
        return on_sample

    def _on_perf(self, source: Source) -> Any:
        accept = self._acceptor(source)

        def on_sample(_ctx: int, _cpu: int, data: int, size: int) -> None:
            accept(ctypes.string_at(data, size), 0, size)
        return on_sample

    def _on_perf_lost(self, source: Source) -> Any:
        def on_lost(_ctx: int, cpu: int, count: int) -> None:
            self._report_lost(source.program, "*", count, {"source": "perf_buffer", "cpu": cpu})
        return on_lost

    # ------------------------------------------------------------------------------ events
    def _acceptor(self, source: Source) -> Accept:
        """The per-record work of `source`, with what it needs bound once: decode in place and add
        time, program, schema version and host (one compiled function per layout, btf_layout.py),
        add the container, queue for the merge."""
        assert source.schema is not None  # _open_all sets it before any buffer is polled
        schema, clock, program, host = source.schema, self._clock, source.program, self._host
        compiled = {t: (layout.stream, layout.size) for t, layout in schema.events.items() if layout.stream is not None}
        type_at, pending, arrival = _TYPE.unpack_from, self._pending, self._arrival
        containers, container_of = self._containers, self._container

        def accept(buffer: Any, offset: int, length: int) -> None:
            found = compiled.get(type_at(buffer, offset)[0]) if length >= 4 else None
            if found is not None and length >= found[1]:
                ts, cgroup, record = found[0](buffer, offset, clock.offset_ns, rfc3339, program, SCHEMA_VERSION, host)
            else:  # an unknown type, a short record, a layout without a compiled function
                ts, cgroup, record = schema.stream_at(buffer, offset, length, clock.offset_ns, rfc3339, program,
                                                      SCHEMA_VERSION, host)
            if cgroup:
                container = containers[cgroup] if cgroup in containers else container_of(cgroup)
                if container is not None:
                    record["container"] = dict(container)
            number = arrival[0]
            arrival[0] = number + 1
            pending.append((ts, number, record))
        return accept

    def _take(self, source: Source, name: str, batches: Batches, stride: int) -> Take:
        """The work of a run of `source`'s records of one layout (ringbuf.py): its rows unpacked
        in one call, then the records (or, for drain_lines, their JSON lines) made in one
        comprehension each (btf_layout.Batches), as `_acceptor` makes them one by one."""
        unpack = batches.row_struct(stride).iter_unpack
        clock, seconds, program, host = self._clock, self._seconds, source.program, self._host
        pending, arrival = self._pending, self._arrival
        if self._lines and self.format == "raw" and batches.lines is not None:
            lines = batches.lines
            containers = self._container_json[0 if batches.container_first else 1]
            tail = tuple(_encode(value) for value in (name, program, SCHEMA_VERSION, {"name": host}))

            def take_lines(view: memoryview) -> None:
                base = arrival[0]
                out = lines(unpack(view), clock.offset_ns, seconds, base, containers, tail)
                arrival[0] = base + len(out)
                pending.extend(out)
            return take_lines
        rows_of, cgroup_of = batches.rows, itemgetter(batches.cgroup_index)
        known, container_of = self._containers, self._container

        def take(view: memoryview) -> None:
            base = arrival[0]
            rows = list(unpack(view))
            out = rows_of(rows, clock.offset_ns, seconds, program, SCHEMA_VERSION, host, base)
            arrival[0] = base + len(out)
            found = {cgroup: container for cgroup in set(map(cgroup_of, rows)) if cgroup
                     and (container := known[cgroup] if cgroup in known else container_of(cgroup)) is not None}
            if found:
                for row, item in zip(rows, out):
                    container = found.get(row[batches.cgroup_index])
                    if container is not None:
                        item[2]["container"] = dict(container)
            pending.extend(out)
        return take

    def _container(self, cgroup_id: int) -> dict[str, str] | None:
        """The container a cgroup id belongs to, as the record's `container`; remembered per id
        (ids are never reused while the kernel runs)."""
        if cgroup_id not in self._containers:
            if len(self._containers) >= _MAX_CONTAINERS:
                self._containers.clear()
            found = self._cgroups.container(cgroup_id)
            self._containers[cgroup_id] = None if found is None else {
                "id": found.id, **({"runtime": found.runtime} if found.runtime else {})}
        return self._containers[cgroup_id]

    def _report_lost(self, program: str, kind: str, count: int, extra: dict[str, Any]) -> None:
        self.lost[(program, kind)] = self.lost.get((program, kind), 0) + count
        if self.lost_records:
            now = self._clock.wall_ns(WallClock.now_ktime_ns())
            self._ready.append({"event": "lost", "program": program, "type": kind, "count": count,
                                "time": rfc3339(now), "time_ns": now, "schema_version": SCHEMA_VERSION,
                                "host": {"name": self._host}, **extra})

    def _release(self, flush: bool = False) -> None:
        """Events older than the window, in timestamp order (arrival order among equals). Each
        ring's events arrive nearly sorted, so sorting the pending list is close to linear."""
        pending = self._pending
        if not pending:
            return
        pending.sort()  # (ts, arrival) are unique: events themselves are never compared
        cut = len(pending) if flush else bisect_right(pending, (WallClock.now_ktime_ns() - self.window_ns, math.inf))
        fmt = self.format
        if self._lines:  # lines made by a layout's template, records (one by one, or not raw) encoded here
            self._ready.extend([item[2] if item[2].__class__ is str else _encode(convert(item[2], fmt)) + "\n"
                                for item in pending[:cut]])
        elif fmt == "raw":
            self._ready.extend([item[2] for item in pending[:cut]])
        else:
            self._ready.extend([convert(item[2], fmt) for item in pending[:cut]])
        del pending[:cut]

    def __iter__(self) -> Iterator[Event]:
        """Events as they become due, forever (until close())."""
        while not self._closed:
            yield from self.drain()
            self.poll()

    def drain(self) -> list[Event]:
        """The events due now, without waiting (for agents with their own loop around poll())."""
        ready, self._ready = self._ready, []
        if self._lines:  # read as lines so far: parsed back, for a caller that mixes the two
            return [json.loads(item) if item.__class__ is str else item for item in ready]
        return ready

    def drain_lines(self) -> list[str]:
        """drain() as JSON lines: each json.dumps(event, sort_keys=True) + "\\n", the same text,
        but made without the event dicts where a layout's compiled template can (raw format, mmap
        reader): what `watch` writes, at several times the rate. From the first call on, the
        stream makes lines, and drain() parses them back."""
        if not self._lines:
            self._lines = True
            for _, _, runs in self._rings:
                runs.clear()  # their functions made records: made again, making lines
        ready, self._ready = self._ready, []
        return [item if item.__class__ is str else _encode(item) + "\n" for item in ready]

    def poll(self, timeout_ms: int = _POLL_MS) -> None:
        """Wait up to `timeout_ms` for events, drain every buffer, release what is due."""
        reading = self._epoll is not None and bool(self._buffers or self._rings)
        if self._epoll is not None and reading:
            self._epoll.poll(0 if self._backlog else timeout_ms / 1000)
        else:
            select.select([], [], [], timeout_ms / 1000)  # every pinned program is gone: wait for a reload
        with _no_collection():  # the round, housekeeping and merge: no allocation in between may start one
            self._round(reading)

    def _round(self, reading: bool) -> None:
        if reading:
            self._backlog = False
            # Records are taken whole: a signal is held until the round ends (interrupts.py), and
            # inside libbpf's consume it could not act anyway.
            with interrupts.deferred():
                for ring, accept, runs in self._rings:
                    if ring.consume(accept, _BUDGET, runs)[1]:  # the budget ran out: more is waiting in that ring
                        self._backlog = True
                for handle, consume, _ in self._buffers:
                    self._taken = 0
                    rc = consume(handle)
                    if rc == -_EAGAIN:
                        self._backlog = True
                    elif rc < 0 and rc != -4:  # -EINTR: consume again next round
                        raise LoadError(f"reading events failed: {self._lib.strerror(rc)}")
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
        """Read what the rings held when called, no more: a ring flooded meanwhile cannot hold the
        stream here (signals are deferred around this)."""
        for ring, accept, runs in self._rings:
            stop = ring.producer_pos
            while ring.consume(accept, _BUDGET, runs)[1] and ring.consumer_pos < stop:
                pass
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
