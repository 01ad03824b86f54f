"""The ring buffer read through its mmap (ringbuf.py), issue 16 requirement 4: correctness, never
timing. Live: a child opens numbered paths in bursts, in lockstep with the reader, so that many
times the ring's size goes through it; every record must arrive once, in order, ungarbled, and
the same as libbpf's ring_buffer decodes it. Fast: the record protocol (BUSY, DISCARD, padding,
a wrapped record, the published consumer position) on a memfd laid out like the kernel's map,
since the kernel never hands these programs' readers a busy or discarded record on demand."""

# ruff: noqa: E402
from __future__ import annotations

import json
import mmap
import os
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from hids_bytecode import api, eventstream
from hids_bytecode.errors import InvalidArgument, RingCorrupt
from hids_bytecode.pins import PIN_ENV
from hids_bytecode.ringbuf import BUSY, DISCARD, MMAP_SAFE, RingReader

PAGE = mmap.PAGESIZE
PREFIX = "/nonexistent-hids-ring"
BURSTS, PER_BURST = 60, 100  # 6000 open records of 208 bytes: about 4.8 times the 256 KiB ring
GENERATOR = """
import os, sys
prefix, n = sys.argv[1], 0
for line in sys.stdin:
    for _ in range(int(line)):
        try:
            os.open(f"{prefix}/{n}", os.O_RDONLY)
        except FileNotFoundError:
            pass
        n += 1
    print("done", flush=True)
"""


# ------------------------------------------------------------------------------ fast tier
class FakeRing:
    """A memfd with the kernel's layout: consumer page, producer page, then the data area. The
    kernel maps the data twice in a row; here the second copy is the file's next bytes, which
    `put` writes too."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.fd = os.memfd_create("fake-ring")
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.producer = 0
        self.reader = RingReader(self.fd, size)

    def put(self, payload: bytes, flags: int = 0) -> int:
        """A record at the producer position; returns its position."""
        pos = self.producer
        record = struct.pack("=II", len(payload) | flags, 0) + payload
        record += b"\0" * (-len(record) % 8)
        offset = 2 * PAGE + (pos & (self.size - 1))
        os.pwrite(self.fd, record, offset)
        if (pos & (self.size - 1)) + len(record) > self.size:  # the kernel's second mapping, by hand
            os.pwrite(self.fd, record[self.size - (pos & (self.size - 1)):], 2 * PAGE)
        else:  # and its copy of a record that does not wrap, which a run crossing the end reads
            os.pwrite(self.fd, record, offset + self.size)
        self.producer += len(record)
        os.pwrite(self.fd, struct.pack("=Q", self.producer), PAGE)
        return pos

    def set_flags(self, pos: int, length: int, flags: int) -> None:
        os.pwrite(self.fd, struct.pack("=I", length | flags), 2 * PAGE + (pos & (self.size - 1)))

    def consumer(self) -> int:
        return int(struct.unpack("=Q", os.pread(self.fd, 8, 0))[0])

    def close(self) -> None:
        self.reader.close()
        os.close(self.fd)


@pytest.fixture
def ring() -> Iterator[FakeRing]:
    fake = FakeRing()
    yield fake
    fake.close()


def _take(ring: FakeRing, budget: int = 100) -> tuple[list[bytes], bool]:
    got: list[bytes] = []
    more = ring.reader.consume(lambda buf, off, n: got.append(bytes(buf[off:off + n])), budget)[1]
    return got, more


def test_records_padding_and_the_published_consumer_position(ring: FakeRing) -> None:
    ring.put(b"abc")
    ring.put(b"x" * 8)
    assert _take(ring) == ([b"abc", b"x" * 8], False)
    assert ring.consumer() == ring.producer == (8 + 8) + (8 + 8)  # 3 bytes padded to 8


def test_a_busy_record_ends_the_round_and_is_read_once_committed(ring: FakeRing) -> None:
    ring.put(b"one")
    busy = ring.put(b"two")
    ring.put(b"three")
    ring.set_flags(busy, 3, BUSY)
    assert _take(ring) == ([b"one"], False)
    assert ring.consumer() == busy  # not past the record being written
    ring.set_flags(busy, 3, 0)
    assert _take(ring) == ([b"two", b"three"], False)


def test_a_discarded_record_is_skipped_but_passed(ring: FakeRing) -> None:
    ring.put(b"kept")
    ring.put(b"dropped", DISCARD)
    ring.put(b"also kept")
    assert _take(ring) == ([b"kept", b"also kept"], False)
    assert ring.consumer() == ring.producer


def test_the_budget_leaves_the_rest_for_the_next_round(ring: FakeRing) -> None:
    for i in range(5):
        ring.put(bytes([i]) * 4)
    assert _take(ring, budget=2) == ([b"\0" * 4, b"\1" * 4], True)
    assert _take(ring, budget=10) == ([bytes([i]) * 4 for i in range(2, 5)], False)


def test_a_record_ending_past_the_producer_is_refused_and_nothing_published(ring: FakeRing) -> None:
    """Only a kernel bug writes such a length; publishing it would move the consumer beyond the
    producer and make the kernel refuse every reservation after."""
    ring.put(b"good")
    bad = ring.put(b"short")
    ring.set_flags(bad, 0x3FFFFFFF, 0)
    with pytest.raises(RingCorrupt, match="ends past the producer"):
        _take(ring)
    assert ring.consumer() == bad  # the good record passed, the bad one not


def test_the_mmap_reader_is_refused_where_its_loads_are_not_acquires(monkeypatch: pytest.MonkeyPatch) -> None:
    """This host is x86_64; an arm64 host (or a 32-bit Python) is stood in for by the flag."""
    monkeypatch.setattr(eventstream, "MMAP_SAFE", False)
    with pytest.raises(InvalidArgument, match="needs x86_64"):
        api.stream(["file"], reader="mmap")


def test_a_record_that_wraps_is_read_whole(ring: FakeRing) -> None:
    ring.put(b"a" * (ring.size - 64))  # leaves 56 bytes before the end
    assert _take(ring)[0] == [b"a" * (ring.size - 64)]
    payload = bytes(range(200))
    ring.put(payload)
    assert _take(ring) == ([payload], False)
    assert ring.consumer() > ring.size  # positions only grow; the offset wrapped


def _typed(kind: int, n: int, size: int = 20) -> bytes:
    return struct.pack("=II", kind, n).ljust(size, b"\xee")


class Runs(dict[tuple[int, int], Any]):
    """Takes runs of types 1 and 2 (not 3), noting each run's records; per-record ones go to `one`."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []
        self.one: list[bytes] = []

    def __missing__(self, key: tuple[int, int]) -> Any:
        kind, length = key
        if kind == 3:
            return None
        stride = (length + 15) & ~7

        def take(view: memoryview) -> None:
            assert len(view) % stride == 0
            self.calls.append([bytes(view[i + 8:i + 8 + length]) for i in range(0, len(view), stride)])
        return take

    def consume(self, ring: FakeRing, budget: int = 100) -> tuple[int, bool]:
        return ring.reader.consume(lambda buf, off, n: self.one.append(bytes(buf[off:off + n])), budget, self)


def test_runs_of_one_type_and_length_are_taken_in_one_call_in_ring_order(ring: FakeRing) -> None:
    records = [_typed(1, n) for n in range(5)] + [_typed(2, n) for n in range(3)] + [_typed(1, 9, 28)]
    records += [_typed(3, 0), _typed(1, 10), _typed(1, 11)]
    for record in records:
        ring.put(record)
    runs = Runs()
    assert runs.consume(ring) == (len(records), False)
    assert runs.calls == [records[0:5], records[5:8], [records[8]], records[10:12]]
    assert runs.one == [records[9]]  # a type nobody takes runs of: one by one
    assert ring.consumer() == ring.producer


def test_a_run_stops_before_a_busy_or_discarded_record_and_at_the_budget(ring: FakeRing) -> None:
    records = [_typed(1, n) for n in range(8)]
    positions = [ring.put(record) for record in records]
    ring.set_flags(positions[3], 20, DISCARD)
    ring.set_flags(positions[6], 20, BUSY)
    runs = Runs()
    assert runs.consume(ring) == (5, False)
    assert runs.calls == [records[0:3], records[4:6]]
    assert ring.consumer() == positions[6]  # not past the record being written
    ring.set_flags(positions[6], 20, 0)
    assert runs.consume(ring, budget=1) == (1, True)
    assert runs.calls[-1] == [records[6]]
    assert runs.consume(ring) == (1, False)
    assert runs.calls[-1] == [records[7]] and ring.consumer() == ring.producer


def test_a_run_spans_at_most_an_eighth_of_the_ring(ring: FakeRing) -> None:
    """Its space goes back to the kernel only after it is decoded: a steady producer must find room."""
    records = [_typed(1, n) for n in range(50)]  # 32-byte strides; an eighth of 4096 bytes holds 16
    for record in records:
        ring.put(record)
    runs = Runs()
    assert runs.consume(ring) == (50, False)
    assert [len(run) for run in runs.calls] == [16, 16, 16, 2]
    assert sum(runs.calls, []) == records


def test_a_run_that_wraps_is_one_contiguous_view(ring: FakeRing) -> None:
    ring.put(b"a" * (ring.size - 8 - 3 * 24))  # 72 bytes left: two 32-byte strides, the third straddles the end
    assert _take(ring)[0] == [b"a" * (ring.size - 8 - 3 * 24)]
    records = [_typed(1, n) for n in range(6)]
    for record in records:
        ring.put(record)
    runs = Runs()
    assert runs.consume(ring) == (6, False)
    assert runs.calls == [records]


# ------------------------------------------------------------------------------ live tier
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="loading eBPF needs root")


@pytest.fixture()
def env(loader_data: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    pins = f"/sys/fs/bpf/hids-ring-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HIDS_BYTECODE_DATA", str(loader_data))
    monkeypatch.setenv(PIN_ENV, pins)
    yield
    assert not Path(pins).exists()


def _lockstep(reader: str, tag: str, lines: bool = False) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """BURSTS x PER_BURST opens by a child, each burst drained before the next starts; the
    generator's records (in arrival order; with `lines`, read as drain_lines' JSON lines and
    parsed) and what the stream reports about its ring."""
    prefix = f"{PREFIX}/{tag}"
    child = subprocess.Popen([sys.executable, "-c", GENERATOR, prefix], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    assert child.stdin and child.stdout
    mine: list[dict[str, Any]] = []
    rounds = 0
    with api.stream(["mini"], "raw", window_ms=0, reader=reader) as events:
        events.poll(0)
        for _ in range(BURSTS):
            child.stdin.write(f"{PER_BURST}\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
            wanted = len(mine) + PER_BURST
            # The records are in the ring once the child's syscalls returned; a bounded number of
            # rounds (not a time) reads them, each round up to the budget.
            for _ in range(10_000):
                events.poll(0)
                batch = [json.loads(line) for line in events.drain_lines()] if lines else events.drain()
                mine += [e for e in batch if e.get("event") == "open" and e["path"].startswith(prefix)]
                rounds += 1
                if len(mine) >= wanted:
                    break
            else:
                break
        info = {"lost": dict(events.lost), "rounds": rounds, "pid": child.pid,
                "rings": [(r.consumer_pos, r.producer_pos, r.size) for r, _, _ in events._rings]}
    child.stdin.close()
    child.wait()
    return mine, info


def _same_fields(event: dict[str, Any]) -> dict[str, Any]:
    """What two runs of the same generator share: all but the times and its process ids."""
    hdr = {k: v for k, v in event["hdr"].items() if k not in ("ts_ns", "pid", "tgid")}
    return {**{k: v for k, v in event.items() if k not in ("time", "time_ns", "hdr")}, "hdr": hdr}


@needs_root
@pytest.mark.skipif(not MMAP_SAFE, reason="the mmap reader is used on x86_64 only")
def test_every_record_arrives_once_in_order_through_many_wraparounds(env: None) -> None:
    tag = uuid.uuid4().hex[:8]
    mine, info = _lockstep("mmap", tag)
    numbers = [int(e["path"].rsplit("/", 1)[1]) for e in mine]
    assert numbers == list(range(BURSTS * PER_BURST)), "lost, repeated or reordered records"
    assert all(e["hdr"]["tgid"] == info["pid"] and e["hdr"]["comm"].startswith("python") for e in mine)
    assert all(e["path"] == f"{PREFIX}/{tag}/{n}" for n, e in enumerate(mine))
    [(consumer, producer, size)] = info["rings"]
    # 6000 records of 208 bytes went through a 256 KiB ring: had the consumer position not been
    # published after reading, the kernel would have dropped all but the first ring-full.
    assert consumer >= BURSTS * PER_BURST * 208 > 4 * size
    assert consumer <= producer


@needs_root
@pytest.mark.skipif(not MMAP_SAFE, reason="the mmap reader is used on x86_64 only")
def test_mmap_and_libbpf_readers_decode_the_same_records(env: None) -> None:
    tag = uuid.uuid4().hex[:8]
    by_mmap, _ = _lockstep("mmap", tag)
    by_libbpf, _ = _lockstep("libbpf", tag)
    assert len(by_mmap) == len(by_libbpf) == BURSTS * PER_BURST
    assert [_same_fields(e) for e in by_mmap] == [_same_fields(e) for e in by_libbpf]


@needs_root
@pytest.mark.skipif(not MMAP_SAFE, reason="the mmap reader is used on x86_64 only")
def test_json_lines_made_from_runs_are_the_records_libbpf_decodes(env: None) -> None:
    """What `watch` writes (drain_lines: compiled templates over runs of records) against the
    one-by-one records of libbpf's reader, for the same generator."""
    tag = uuid.uuid4().hex[:8]
    by_lines, info = _lockstep("mmap", tag, lines=True)
    by_libbpf, _ = _lockstep("libbpf", tag)
    assert len(by_lines) == len(by_libbpf) == BURSTS * PER_BURST, info  # info: what the ring lost
    assert [_same_fields(e) for e in by_lines] == [_same_fields(e) for e in by_libbpf]


def test_compiled_stream_records_equal_decoded_ones_plus_the_stream_keys(loader_data: Path) -> None:
    """Each layout's compiled stream function gives what decode_at gives plus the stream's keys."""
    from hids_bytecode import libbpf
    from hids_bytecode.btf_layout import schema_from_object_file
    from hids_bytecode.manifest import load_manifest
    from hids_bytecode.walltime import rfc3339

    mini = next(e for e in load_manifest(loader_data).entries if e.program == "mini").object_path
    schema = schema_from_object_file(libbpf.get(), mini)
    assert all(layout.stream is not None for layout in schema.events.values())
    for type_value, layout in schema.events.items():
        blob = bytearray((i * 37 + 11) % 256 for i in range(layout.size + 16))
        blob[8:12] = type_value.to_bytes(4, sys.byteorder)
        view = memoryview(bytes(blob))
        ts, cgroup, record = schema.stream_at(view, 8, layout.size, 1000, rfc3339, "mini", "1", "host")
        plain = schema.decode_at(view, 8, layout.size)
        assert (ts, cgroup) == (plain["hdr"]["ts_ns"], plain["hdr"]["cgroup_id"])
        wall = ts + 1000
        assert record == {**plain, "time_ns": wall, "time": rfc3339(wall), "program": "mini", "schema_version": "1",
                          "host": {"name": "host"}}
