"""Runs of ring records decoded in one call (btf_layout.Batches, issue 16 requirement 4): the
records equal the one-by-one decoder's, and the JSON lines that `watch` writes, made by a
compiled template without the records, equal json.dumps(record, sort_keys=True) byte for byte,
whatever the kernel copied into the strings: quotes, backslashes, control characters, non-ASCII
and invalid UTF-8. Fast tier: synthetic records laid out as in a ring (8-byte header, padding)."""

# ruff: noqa: E402
from __future__ import annotations

import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["conftest_loader"]

from hids_bytecode import libbpf
from hids_bytecode.btf_layout import Schema, Seconds, schema_from_object_file
from hids_bytecode.manifest import load_manifest
from hids_bytecode.walltime import rfc3339

HOSTILE = [
    b'say "hi"\\ now',
    bytes(range(1, 32)) + b"\x7f",
    "caf\u00e9 \u2603 \U0001f600".encode(),
    b"\xff\xfe bad \xc3",  # invalid UTF-8, and a sequence cut short
    b"\xed\xa0\x80 surrogate",  # a UTF-16 surrogate encoded: not UTF-8
    b"</script>\\u2028",
    b"",
]
OFFSET_NS = 1_700_000_000_123_456_789
CONTAINER = {"id": "c0ffee" * 10 + "abcd", "runtime": 'docker"\\'}


@pytest.fixture(scope="module")
def schema(loader_data: Path) -> Schema:
    mini = next(e for e in load_manifest(loader_data).entries if e.program == "mini").object_path
    return schema_from_object_file(libbpf.get(), mini)


def _record(schema: Schema, type_value: int, n: int) -> bytes:
    """A record of this layout: patterned bytes, then every char array filled with a hostile
    string, a NUL and garbage after it (the kernel leaves the rest of a reservation as it was)."""
    layout = schema.events[type_value]
    assert layout.batches is not None
    blob = bytearray((i * 37 + n * 11) % 256 for i in range(layout.size))
    blob[0:4] = type_value.to_bytes(4, sys.byteorder)
    fields = _char_arrays(layout.batches.fmt)
    for k, (offset, size) in enumerate(fields):
        text = HOSTILE[(n + k) % len(HOSTILE)][:size - 1]
        blob[offset:offset + len(text) + 1] = text + b"\0"
    if layout.name == "connect":  # a real family, so addresses become IP strings
        blob[64:66] = (socket.AF_INET6 if n % 2 else socket.AF_INET).to_bytes(2, sys.byteorder)
    return bytes(blob)


def _char_arrays(fmt: str) -> list[tuple[int, int]]:
    """(offset, size) of each `Ns` item of a struct format made of padding and plain codes."""
    out, offset = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        size = int(count or 1)
        if code == "s":
            out.append((offset, size))
            offset += size
        elif code == "x":
            offset += size
        else:
            offset += size * {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4, "Q": 8, "q": 8, "?": 1}[code]
    return out


def _run(records: list[bytes]) -> tuple[memoryview, int]:
    """The records as a ring holds them: header (length, page offset) and padding to 8."""
    stride = (len(records[0]) + 15) & ~7
    chunk = b"".join((len(r).to_bytes(4, sys.byteorder) + bytes(4) + r).ljust(stride, b"\0") for r in records)
    return memoryview(chunk), stride


def _cgroups(record: dict[str, Any]) -> int:
    return int(record["hdr"]["cgroup_id"])


@pytest.mark.parametrize("name", ["exec", "open", "connect"])
def test_a_run_decodes_to_the_one_by_one_records_and_their_exact_json_lines(schema: Schema, name: str) -> None:
    type_value = next(t for t, layout in schema.events.items() if layout.name == name)
    layout = schema.events[type_value]
    batches = layout.batches
    assert batches is not None and batches.lines is not None
    records = [_record(schema, type_value, n) for n in range(2 * len(HOSTILE))]
    view, stride = _run(records)
    rows = list(batches.row_struct(stride).iter_unpack(view))
    seconds = Seconds()

    made = batches.rows(rows, OFFSET_NS, seconds, "mini", "1", "h\u00f6st\n", 40)
    expected = [schema.stream_at(r, 0, len(r), OFFSET_NS, rfc3339, "mini", "1", "h\u00f6st\n") for r in records]
    assert [(ts, n) for ts, n, _ in made] == [(ts, 40 + i) for i, (ts, _, _) in enumerate(expected)]
    assert [record for _, _, record in made] == [record for _, _, record in expected]

    # Every other record's cgroup is a container's.
    with_container = {_cgroups(r) for i, (_, _, r) in enumerate(expected) if i % 2}
    container_json = json.dumps(CONTAINER, sort_keys=True)
    containers = {_cgroups(r): "" for _, _, r in expected}
    for cgroup in with_container:
        containers[cgroup] = (f'"container": {container_json}, ' if batches.container_first
                              else f', "container": {container_json}')
    tail = tuple(json.dumps(v, sort_keys=True) for v in (name, "mini", "1", {"name": "h\u00f6st\n"}))
    lines = batches.lines(iter(rows), OFFSET_NS, seconds, 40, containers, tail)
    assert [(ts, n) for ts, n, _ in lines] == [(ts, n) for ts, n, _ in made]
    for (_, _, line), (_, _, record) in zip(lines, expected, strict=True):
        if _cgroups(record) in with_container:
            record = {**record, "container": CONTAINER}
        assert line == json.dumps(record, sort_keys=True) + "\n"
        assert json.loads(line) == record
        assert line.isascii() and line.count("\n") == 1


def test_the_hostile_strings_reach_the_records_decoded_as_utf8_with_replacement(schema: Schema) -> None:
    """The test above compares against the same decoding; this pins what that decoding is."""
    type_value = next(t for t, layout in schema.events.items() if layout.name == "open")
    paths = set()
    for n in range(len(HOSTILE)):
        record = _record(schema, type_value, n)
        paths.add(schema.stream_at(record, 0, len(record), 0, rfc3339, "m", "1", "h")[2]["path"])
    assert {'say "hi"\\ now', "".join(map(chr, range(1, 32))) + "\x7f", "\ufffd\ufffd bad \ufffd",
            "caf\u00e9 \u2603 \U0001f600"} <= paths


def test_seconds_format_as_rfc3339_does() -> None:
    seconds = Seconds()
    for wall in (0, 1, 999_999_999, 1_000_000_000, OFFSET_NS, 4_102_444_800_000_000_000, -1):
        assert f"{seconds[wall // 1_000_000_000]}.{wall % 1_000_000_000:09d}Z" == rfc3339(wall)
    for second in range(100):  # bounded: cleared when full
        seconds[second]
    assert len(seconds) <= 64
