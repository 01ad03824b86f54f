"""Decoded events from the `events` map (ring buffer or perf buffer, whichever the object made),
with lost-event counts: the perf buffer's lost callback and the `counters` map's dropped totals."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

from . import interrupts
from . import libbpf as lb
from .btf_layout import Schema
from .errors import LoadError

__all__ = ["map_info", "read_counters", "iter_events", "RINGBUF", "PERF_EVENT_ARRAY"]

PERF_EVENT_ARRAY = 4
RINGBUF = 27
_PERF_PAGES = 64
_POLL_MS = 200


def map_info(lib: lb.Libbpf, fd: int) -> lb.MAP_INFO:
    info = lb.MAP_INFO()
    length = ctypes.c_uint32(ctypes.sizeof(info))
    rc = lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(length))
    if rc != 0:
        raise LoadError(f"cannot read map info of fd {fd}: {lib.strerror(rc)}")
    return info


def read_counters(lib: lb.Libbpf, fd: int, schema: Schema) -> dict[str, dict[str, int]]:
    """Per event type, emitted and dropped summed over CPUs."""
    info = map_info(lib, fd)
    cpus = lib.libbpf_num_possible_cpus()
    stride = (info.value_size + 7) // 8 * 8
    totals: dict[str, dict[str, int]] = {}
    if schema.counter is None:
        return totals
    for index in range(info.max_entries):
        key = ctypes.c_uint32(index)
        buf = ctypes.create_string_buffer(stride * cpus)
        if lib.bpf_map_lookup_elem(fd, ctypes.byref(key), buf) != 0:
            continue
        raw = buf.raw
        sums: dict[str, int] = {}
        for cpu in range(cpus):
            for name, value in schema.counter(raw[cpu * stride:cpu * stride + info.value_size]).items():
                sums[name] = sums.get(name, 0) + value
        if any(sums.values()):
            totals[schema.type_names.get(index, str(index))] = sums
    return totals


def iter_events(lib: lb.Libbpf, events_fd: int, schema: Schema, counters_fd: int | None = None,
                poll_ms: int = _POLL_MS) -> Iterator[dict[str, Any]]:
    """Yield decoded events forever; also `{"event": "lost", ...}` records when events were lost."""
    pending: list[dict[str, Any]] = []

    def on_sample(data: int, size: int) -> None:
        pending.append(schema.decode(ctypes.string_at(data, size)))

    def on_ring(_ctx: int, data: int, size: int) -> int:
        on_sample(data, size)
        return 0

    def on_perf(_ctx: int, _cpu: int, data: int, size: int) -> None:
        on_sample(data, size)

    def on_lost(_ctx: int, cpu: int, count: int) -> None:
        pending.append({"event": "lost", "source": "perf_buffer", "cpu": cpu, "count": count})

    kind = map_info(lib, events_fd).type
    callbacks: tuple[object, ...]  # kept alive while libbpf holds them
    if kind == RINGBUF:
        callbacks = (lb.RINGBUF_SAMPLE_FN(on_ring),)
        buffer = lib.ring_buffer__new(events_fd, callbacks[0], None, None)
        poll, free = lib.ring_buffer__poll, lib.ring_buffer__free
    elif kind == PERF_EVENT_ARRAY:
        callbacks = (lb.PERF_SAMPLE_FN(on_perf), lb.PERF_LOST_FN(on_lost))
        buffer = lib.perf_buffer__new(events_fd, _PERF_PAGES, callbacks[0], callbacks[1], None, None)
        poll, free = lib.perf_buffer__poll, lib.perf_buffer__free
    else:
        raise LoadError(f"map `events` has type {kind}, expected RINGBUF or PERF_EVENT_ARRAY")
    if not buffer:
        _, text = lb.errno_text()
        raise LoadError(f"cannot open the events buffer: {text}")
    dropped = _dropped(lib, counters_fd, schema)
    try:
        while True:
            # The sample callbacks run inside poll: a signal is held until it returns (interrupts.py).
            with interrupts.deferred():
                rc = poll(buffer, poll_ms)
            if rc < 0 and rc != -4:  # -EINTR: a signal, poll again
                raise LoadError(f"polling events failed: {lib.strerror(rc)}")
            now = _dropped(lib, counters_fd, schema)
            for name, total in now.items():
                if total > dropped.get(name, 0):
                    pending.append({"event": "lost", "source": "counters", "type": name,
                                    "count": total - dropped.get(name, 0)})
            dropped = now
            while pending:
                yield pending.pop(0)
    finally:
        with interrupts.deferred():
            free(buffer)
        del callbacks


def _dropped(lib: lb.Libbpf, fd: int | None, schema: Schema) -> dict[str, int]:
    if fd is None:
        return {}
    return {name: c.get("dropped", 0) for name, c in read_counters(lib, fd, schema).items()}
