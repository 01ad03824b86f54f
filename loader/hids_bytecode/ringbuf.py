"""A BPF ring buffer read through its own mmap, without a C callback per record.

The kernel lays a RINGBUF map out as (kernel/bpf/ringbuf.c, libbpf's ringbuf.c): at offset 0 the
consumer page, which the reader maps read-write and whose first word is the consumer position;
at one page the producer page (read-only, first word the producer position) followed by the data
pages, mapped twice in a row so a record that wraps is still contiguous. A record is an 8-byte
header (u32 length with the BUSY bit 31 while it is being written and the DISCARD bit 30, u32
page offset) and its bytes, padded to 8. Positions only grow; `pos & mask` is the offset.

The reader hands each committed record's offset and length to a function that decodes it in
place, or a whole run of records of one layout to a function that unpacks them in one call
(struct.iter_unpack), then publishes the new consumer position (one aligned 8-byte store through a memoryview:
the kernel sees the space free and never a torn value). Loads need acquire ordering (position,
then length, then data): x86_64's memory model gives that to plain loads, so this reader is used
there; other architectures keep libbpf's ring_buffer (eventstream.py).
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
import sys
from collections.abc import Callable, Mapping

from .errors import RingCorrupt

__all__ = ["RingReader", "Runs", "Take", "MMAP_SAFE", "BUSY", "DISCARD"]

BUSY = 1 << 31
DISCARD = 1 << 30
_HDR = 8
# x86's total store order makes plain loads acquires; a 32-bit interpreter would read the 8-byte
# positions in two halves and could see a torn one.
MMAP_SAFE = platform.machine() in ("x86_64", "AMD64") and sys.maxsize > 2**32

Accept = Callable[[memoryview, int, int], None]  # (data, offset of the record's bytes, length)
Take = Callable[[memoryview], None]  # records of one length, each with its header and padding
Runs = Mapping[tuple[int, int], "Take | None"]  # (type, length) -> who takes runs of such records
_U32 = struct.Struct("=I")


class RingReader:
    """The ring of the RINGBUF map `fd` (of `max_entries` bytes, a power of two)."""

    def __init__(self, fd: int, max_entries: int) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        self.size = max_entries
        self.mask = max_entries - 1
        # A run's space goes back to the kernel only once it is decoded: an eighth of the ring at
        # most, so a producer at a steady rate never finds the ring held by one long run.
        self._run_bytes = max_entries // 8
        self._consumer_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data_map = mmap.mmap(fd, page + 2 * max_entries, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer_map.close()
            raise
        self._consumer = memoryview(self._consumer_map).cast("Q")
        self._producer = memoryview(self._data_map)[:8].cast("Q")
        self._data = memoryview(self._data_map)[page:]
        self._header = self._data.cast("I")  # u32 view: the length word of the record at offset o is [o // 4]

    @property
    def consumer_pos(self) -> int:
        return int(self._consumer[0])

    @property
    def producer_pos(self) -> int:
        return int(self._producer[0])

    def pending(self) -> int:
        """Bytes committed or being written that the consumer has not passed yet."""
        return self.producer_pos - self.consumer_pos

    def consume(self, accept: Accept, budget: int, runs: Runs | None = None) -> tuple[int, bool]:
        """Hand up to `budget` committed records to `accept`; (records handed, more waiting).

        With `runs`, consecutive records of the same length and type (hdr.type, the first u32)
        go to `runs[(type, length)]` in one call when that is not None: it gets the records'
        bytes, each with its 8-byte header and padding to 8, as one view to read before it
        returns; a run spans at most an eighth of the ring. The consumer position is published
        after each record or run, as libbpf publishes it after each record, so the kernel can
        reuse the space at once; a record still being written (BUSY) ends the round."""
        consumer, header, data, mask = self._consumer, self._header, self._data, self.mask
        pos = consumer[0]
        producer = self._producer[0]
        taken = 0
        while pos < producer:
            if taken >= budget:
                return taken, True
            offset = pos & mask
            length = header[offset >> 2]
            if length & BUSY:
                return taken, False
            size = length & ~(BUSY | DISCARD)
            stride = (size + _HDR + 7) & ~7
            end = pos + stride
            if end > producer:  # only a kernel bug writes this: never publish a position past the producer
                raise RingCorrupt(f"ring record of {size} bytes at {pos} ends past the producer ({producer})")
            if not length & DISCARD:
                take = runs[(header[(offset >> 2) + 2], length)] if runs is not None and size >= 4 else None
                if take is not None:
                    room = min(budget - taken, (producer - pos) // stride, self._run_bytes // stride)
                    count = self._run(offset, stride, length, room)
                    take(data[offset:offset + count * stride])
                    taken += count
                    end = pos + count * stride
                else:
                    accept(data, offset + _HDR, size)
                    taken += 1
            pos = end
            consumer[0] = pos
            if pos >= producer:
                producer = self._producer[0]  # more may have been committed meanwhile
        return taken, False

    def _run(self, offset: int, stride: int, length: int, room: int) -> int:
        """How many of the `room` records from `offset` on, `stride` bytes apart, are committed
        with this `length` and the first one's type: those are whole and in the ring (room never
        reaches past the producer), so no header between them needs a look of its own."""
        if room <= 1:
            return 1
        first, step = offset >> 2, stride >> 2
        lengths = self._header[first:first + room * step:step]
        types = self._header[first + 2:first + 2 + room * step:step]
        kind = types[0]
        if lengths.tobytes() == _U32.pack(length) * room and types.tobytes() == _U32.pack(kind) * room:
            return room
        count = 1
        for other_length, other_kind in zip(lengths.tolist()[1:], types.tolist()[1:]):
            if other_length != length or other_kind != kind:  # also a BUSY or discarded one: a run ends there
                break
            count += 1
        return count

    def close(self) -> None:
        for view in (self._header, self._data, self._producer, self._consumer):
            view.release()
        self._data_map.close()
        self._consumer_map.close()
