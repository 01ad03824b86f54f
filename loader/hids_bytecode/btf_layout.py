"""Event layouts derived from the object's own BTF, read through libbpf (btf__parse_elf /
bpf_object__btf, btf__type_by_id, btf__name_by_offset): no struct layout is ever hand-copied.

Conventions (docs/DESIGN.md): `enum hids_event_type` value HIDS_EV_<NAME> has payload
`struct hids_ev_<name>`, whose first member is `struct hids_hdr hdr` starting with `type`. char
arrays become strings, except a char array `X` with a sibling `X_len`, which holds NUL-separated
strings in its first X_len bytes (argv) and becomes a list; members named `*addr` next to a
`*family` member become IP strings.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Union, cast

from . import libbpf as lb
from .errors import LoadError

__all__ = ["EventLayout", "Batches", "Seconds", "Schema", "encode_json", "schema_from_object",
           "schema_from_object_file", "schema_from_btf"]

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_MODIFIERS = {9, 10, 11, 18}  # volatile, const, restrict, type_tag: no layout of their own
_ENUM64 = 19
_ORDER = sys.byteorder
_TYPE = struct.Struct("=I")  # hdr.type, a record's first member

Decoder = Callable[[bytes], Any]
Reader = Callable[..., dict[str, Any]]  # (buffer, offset=0) -> the record, decoded in place
StreamReader = Callable[..., "tuple[int, int, dict[str, Any]]"]  # see Schema.stream_at


@dataclass(frozen=True)
class EventLayout:
    name: str  # "exec" for struct hids_ev_exec
    type_value: int
    size: int
    record: Reader  # (buffer, offset=0) -> {"event": name, ...}: reads `size` bytes from offset
    stream: StreamReader | None = None  # the same as a stream record, see Schema.stream_at
    batches: Batches | None = None  # the same for runs of records, see Batches


class _Btf:
    def __init__(self, lib: lb.Libbpf, btf: int) -> None:
        self.lib, self.btf = lib, btf

    def type(self, type_id: int) -> tuple[int, int, int, int, str, int]:
        """kind, vlen, kflag, size or type, name, and the address of the kind-specific data after it."""
        ptr = self.lib.btf__type_by_id(self.btf, type_id)
        t = ptr.contents
        name = (self.lib.btf__name_by_offset(self.btf, t.name_off) or b"").decode()
        kind, vlen, kflag = (t.info >> 24) & 0x1F, t.info & 0xFFFF, t.info >> 31
        tail = ctypes.addressof(t) + ctypes.sizeof(lb.BTF_TYPE)
        return kind, vlen, kflag, t.size_or_type, name, tail

    def name(self, offset: int) -> str:
        return (self.lib.btf__name_by_offset(self.btf, offset) or b"").decode()

    def strip(self, type_id: int) -> int:
        """Follow typedefs and modifiers to the type that has a layout."""
        while True:
            kind, _, _, ref, _, _ = self.type(type_id)
            if kind != _TYPEDEF and kind not in _MODIFIERS:
                return type_id
            type_id = ref

    def size(self, type_id: int) -> int:
        return int(self.lib.btf__resolve_size(self.btf, type_id))

    def find(self, kind: int, name: str) -> int | None:
        for type_id in range(1, self.lib.btf__type_cnt(self.btf)):
            k, _, _, _, n, _ = self.type(type_id)
            if k == kind and n == name:
                return type_id
        return None

    def enum_values(self, type_id: int) -> dict[int, str]:
        kind, vlen, _, _, _, tail = self.type(type_id)
        if kind == _ENUM64:
            raw = (ctypes.c_uint32 * (3 * vlen)).from_address(tail)
            return {raw[3 * i + 1] | (raw[3 * i + 2] << 32): self.name(raw[3 * i]) for i in range(vlen)}
        values = (lb.BTF_ENUM * vlen).from_address(tail)
        return {v.val: self.name(v.name_off) for v in values}

    def decoder(self, type_id: int) -> Decoder:
        type_id = self.strip(type_id)
        kind, vlen, kflag, size_or_type, name, tail = self.type(type_id)
        if kind == _INT:
            encoding = (ctypes.c_uint32.from_address(tail).value >> 24) & 0xF
            signed = bool(encoding & 1)
            if encoding & 4:
                return lambda b: bool(int.from_bytes(b[:size_or_type], _ORDER))
            return lambda b: int.from_bytes(b[:size_or_type], _ORDER, signed=signed)
        if kind in (_ENUM, _ENUM64):
            names = self.enum_values(type_id)

            def enum(b: bytes) -> Any:
                value = int.from_bytes(b[:size_or_type], _ORDER)
                return names.get(value, value)
            return enum
        if kind == _PTR:
            return lambda b: int.from_bytes(b[:8], _ORDER)
        if kind == _ARRAY:
            arr = lb.BTF_ARRAY.from_address(tail)
            elem = self.strip(arr.type)
            ekind, _, _, _, ename, _ = self.type(elem)
            esize = self.size(elem)
            if ekind == _INT and esize == 1 and ename == "char":
                def c_string(b: bytes) -> str:
                    return _c_string(b[:arr.nelems])
                c_string.is_c_string = True  # type: ignore[attr-defined]
                return c_string
            if ekind == _INT and esize == 1:
                return lambda b: b[:arr.nelems].hex()
            inner = self.decoder(elem)
            count = arr.nelems
            return lambda b: [inner(b[i * esize:(i + 1) * esize]) for i in range(count)]
        if kind in (_STRUCT, _UNION):
            return self._struct_decoder(vlen, kflag, tail)
        return lambda b: b.hex()

    def _struct_decoder(self, vlen: int, kflag: int, tail: int) -> Decoder:
        fields: list[tuple[str, int, int, int, Decoder]] = []  # name, bit offset, bit size, byte size, decoder
        for m in (lb.BTF_MEMBER * vlen).from_address(tail):
            bit_size, bit_off = (m.offset >> 24, m.offset & 0xFFFFFF) if kflag else (0, m.offset)
            fields.append((self.name(m.name_off), bit_off, bit_size, self.size(m.type), self.decoder(m.type)))
        families = [n for n, *_ in fields if n.endswith("family")]
        addresses = [n for n, *_ in fields if n.endswith("addr")] if families else []
        names = {n for n, *_ in fields}
        string_lists = [n for n, _, _, _, dec in fields if getattr(dec, "is_c_string", False) and f"{n}_len" in names]

        def decode(b: bytes) -> dict[str, Any]:
            out: dict[str, Any] = {}
            raw: dict[str, bytes] = {}
            for name, bit_off, bit_size, size, dec in fields:
                if bit_size:
                    word = int.from_bytes(b[bit_off // 8:bit_off // 8 + size], _ORDER)
                    out[name] = (word >> (bit_off % 8)) & ((1 << bit_size) - 1)
                    continue
                chunk = b[bit_off // 8:bit_off // 8 + size]
                raw[name] = chunk
                out[name] = dec(chunk)
            if families:
                family = out.get(families[0])
                for name in addresses:
                    out[name] = _ip(family, raw.get(name, b""), out[name])
            for name in string_lists:
                out[name] = _strings(raw[name], out.get(f"{name}_len"))
            return out

        return decode

    def fast_decoder(self, type_id: int, event: str | None = None, stream: bool = False) -> Reader | None:
        """For the common case (no bitfields, unions or arrays of non-byte types): one function
        made for this layout, `decode(buffer, offset=0)`, that unpacks the record in place with
        one struct.Struct and builds its dict in one expression (with `"event": event` first when
        given). Several times the member-by-member decoder's throughput; the same result.

        With `stream`, the function is a stream record's (see Schema.stream_at): None when the
        layout has no hdr.ts_ns and hdr.cgroup_id."""
        plan = self._plan(type_id)
        return None if plan is None else _compile_reader(*plan, event, stream)

    def fast_batches(self, type_id: int, event: str) -> Batches | None:
        """The functions a stream gives whole runs of same-layout ring records (Batches): None
        where fast_decoder(..., stream=True) is None."""
        plan = self._plan(type_id)
        return None if plan is None else _compile_batches(*plan, event)

    def _plan(self, type_id: int) -> _Plan | None:
        fields: list[_Field] = []
        containers: list[tuple[int, str]] = [(-1, "")]  # (parent index, key) of each nested dict
        ip_fixups: list[tuple[int, str, list[str]]] = []
        if not self._flatten(type_id, 0, 0, fields, containers, ip_fixups):
            return None
        fields.sort(key=lambda f: f[0])
        fmt, cursor = "=", 0
        for offset, code, size, _, _ in fields:
            if offset < cursor:
                return None
            fmt += f"{offset - cursor}x{code}" if offset > cursor else code
            cursor = offset + size
        return struct.Struct(fmt), fields, containers, ip_fixups

    def _flatten(self, type_id: int, base: int, container: int, fields: list[_Field],
                 containers: list[tuple[int, str]], ip_fixups: list[tuple[int, str, list[str]]]) -> bool:
        kind, vlen, kflag, _, _, tail = self.type(self.strip(type_id))
        if kind != _STRUCT:
            return False
        names = []
        for m in (lb.BTF_MEMBER * vlen).from_address(tail):
            if kflag and m.offset >> 24:
                return False  # bitfield
            name, offset = self.name(m.name_off), base + (m.offset & 0xFFFFFF if kflag else m.offset) // 8
            names.append(name)
            member = self.strip(m.type)
            mkind, _, _, size_or_type, _, mtail = self.type(member)
            if mkind == _STRUCT:
                containers.append((container, name))
                if not self._flatten(member, offset, len(containers) - 1, fields, containers, ip_fixups):
                    return False
                continue
            if mkind == _INT:
                encoding = (ctypes.c_uint32.from_address(mtail).value >> 24) & 0xF
                code = "?" if encoding & 4 else _INT_CODES.get((size_or_type, bool(encoding & 1)))
                if code is None:
                    return False
                fields.append((offset, code, size_or_type, (container, name), None))
            elif mkind in (_ENUM, _ENUM64):
                fields.append((offset, _INT_CODES[(size_or_type, False)], size_or_type, (container, name),
                               _enum_name(self.enum_values(member))))
            elif mkind == _PTR:
                fields.append((offset, "Q", 8, (container, name), None))
            elif mkind == _ARRAY:
                arr = lb.BTF_ARRAY.from_address(mtail)
                elem = self.strip(arr.type)
                ekind, _, _, _, ename, _ = self.type(elem)
                if ekind != _INT or self.size(elem) != 1:
                    return False
                post = _c_string if ename == "char" else bytes.hex
                fields.append((offset, f"{arr.nelems}s", arr.nelems, (container, name), post))
            else:
                return False
        families = [n for n in names if n.endswith("family")]
        if families:
            ip_fixups.append((container, families[0], [n for n in names if n.endswith("addr")]))
        for index, (offset, code, size, (owner, name), finish) in enumerate(fields):
            if owner == container and finish is _c_string and f"{name}_len" in names:
                fields[index] = (offset, code, size, (owner, name), _ListOfStrings(f"{name}_len"))
        return True


_INT_CODES = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h", (4, False): "I", (4, True): "i",
              (8, False): "Q", (8, True): "q"}


def _enum_name(values: dict[int, str]) -> Callable[[Any], Any]:
    """An enumerator's name for its value; a value without one stays a number."""
    return lambda v: values.get(v, v)


def _c_string(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


class _ListOfStrings:
    """Marks a char array with a `<name>_len` sibling: NUL-separated strings in its first _len bytes."""

    def __init__(self, length_key: str) -> None:
        self.length_key = length_key


# A fast_decoder field: byte offset, struct code, byte size, (container index, key), post-processing.
_Field = tuple[int, str, int, tuple[int, str], Union[Callable[[Any], Any], _ListOfStrings, None]]


_Plan = tuple[struct.Struct, list[_Field], list[tuple[int, str]], list[tuple[int, str, list[str]]]]
_NS = 1_000_000_000


def _values(fields: list[_Field], ip_fixups: list[tuple[int, str, list[str]]]) -> dict[tuple[int, str], str]:
    """(container, key) -> the Python expression of its final value, reading tuple `v` of the
    layout's unpack. Only integers (tuple indexes) and repr()'d names from the object's BTF enter
    the source; enum lookups are namespace entries e<index>."""
    value: dict[tuple[int, str], str] = {}
    for index, (_, _, size, owner_key, post) in enumerate(fields):
        if post is None or isinstance(post, _ListOfStrings):
            value[owner_key] = f"v[{index}]"
        elif post is _c_string:
            value[owner_key] = f"small[v[{index}]]" if size <= _SMALL else \
                f"v[{index}].partition(NUL)[0].decode('utf-8', 'replace')"
        elif post is bytes.hex:
            value[owner_key] = f"v[{index}].hex()"
        else:  # an enum: its names
            value[owner_key] = f"e{index}(v[{index}])"
    addresses: dict[tuple[int, str], str] = {}  # need their family's value: made from the raw ones
    for owner, family_key, addr_keys in ip_fixups:
        family = value.get((owner, family_key), "None")
        for key in addr_keys:
            if (owner, key) in value:
                raw = value[(owner, key)]
                addresses[(owner, key)] = f"_ip({family}, _as_bytes({raw}), {raw})"
    value.update(addresses)
    for index, (_, _, _, (owner, key), post) in enumerate(fields):
        if isinstance(post, _ListOfStrings):
            value[(owner, key)] = f"_strings(v[{index}], {value.get((owner, post.length_key), 'None')})"
    return value


def _namespace(layout: struct.Struct, fields: list[_Field]) -> dict[str, Any]:
    namespace: dict[str, Any] = {"unpack_from": layout.unpack_from, "_strings": _strings, "_ip": _ip,
                                 "_as_bytes": _as_bytes, "NUL": b"\0", "esc": encode_basestring_ascii,
                                 "_json_list": _json_list, "_json_any": encode_json, "TF": ("false", "true"),
                                 "small": _SMALL_TEXT, "small_json": _SMALL_JSON}
    for index, (_, _, _, _, post) in enumerate(fields):
        if post is not None and not isinstance(post, _ListOfStrings) and post not in (_c_string, bytes.hex):
            namespace[f"e{index}"] = post
    return namespace


def _display(fields: list[_Field], containers: list[tuple[int, str]], value: dict[tuple[int, str], str],
             container: int = 0) -> str:
    """The dict display of `container`: nested structs first, then the members in layout order."""
    items = [f"{key!r}: {_display(fields, containers, value, child)}" for child, (parent, key) in enumerate(containers)
             if parent == container and child]
    items += [f"{key!r}: {value[(owner, key)]}" for _, _, _, (owner, key), _ in fields if owner == container]
    return "{" + ", ".join(items) + "}"


def _hdr_members(fields: list[_Field], containers: list[tuple[int, str]]) -> tuple[int, int] | None:
    """The tuple indexes of hdr.ts_ns and hdr.cgroup_id, which a stream merges and enriches by."""
    hdr = next((i for i, c in enumerate(containers) if c == (0, "hdr")), None)
    found = {key: index for index, (_, code, _, (owner, key), post) in enumerate(fields)
             if owner == hdr and post is None and code in ("Q", "q")}
    return (found["ts_ns"], found["cgroup_id"]) if "ts_ns" in found and "cgroup_id" in found else None


def _compile(source: list[str], namespace: dict[str, Any], name: str, label: str) -> Any:
    exec(compile("\n".join(source), f"<hids layout {label}>", "exec"), namespace)
    return namespace[name]


def _compile_reader(layout: struct.Struct, fields: list[_Field], containers: list[tuple[int, str]],
                    ip_fixups: list[tuple[int, str, list[str]]], event: str | None, stream: bool) -> Reader | None:
    """Python source for one layout, compiled once: `v = unpack_from(b, o)` then a dict display."""
    value = _values(fields, ip_fixups)
    body = _display(fields, containers, value)
    if event is not None:
        body = "{" + f"'event': {event!r}, " + body[1:] if body != "{}" else "{" + f"'event': {event!r}" + "}"
    lines = ["def decode(b, o=0):", "    v = unpack_from(b, o)"]
    if stream:  # the stream's keys in the same display: the dict is made once, at its final size
        hdr = _hdr_members(fields, containers)
        if hdr is None:
            return None
        lines[0] = "def decode(b, o, offset_ns, rfc3339, program, version, host):"
        lines.append(f"    wall = v[{hdr[0]}] + offset_ns")
        body = body[:-1] + (", 'time_ns': wall, 'time': rfc3339(wall), 'program': program, "
                            "'schema_version': version, 'host': {'name': host}}")
        body = f"v[{hdr[0]}], v[{hdr[1]}], {body}"
    lines.append(f"    return {body}")
    return cast(Reader, _compile(lines, _namespace(layout, fields), "decode", event or "struct"))


class Seconds(dict[int, str]):
    """Unix second -> `YYYY-MM-DDTHH:MM:SS` (UTC), remembered: a run of records shares a few
    seconds, so the strftime of rfc3339 is paid once per second, not once per record."""

    def __missing__(self, second: int) -> str:
        if len(self) >= 64:
            self.clear()
        text = self[second] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return text


RowsReader = Callable[..., "list[tuple[int, int, dict[str, Any]]]"]
LinesReader = Callable[..., "list[tuple[int, int, str]]"]


@dataclass(frozen=True)
class Batches:
    """A layout's functions over a run of its ring records, each row a tuple of
    `row_struct(stride)` (the ring's 8-byte record header skipped, the layout, padding):

    - rows(rows, offset_ns, seconds, program, version, host, arrival) -> [(ts_ns, arrival + i,
      record)], each record what Schema.stream_at gives; `seconds` a Seconds.
    - lines(rows, offset_ns, seconds, arrival, containers, tail) -> [(ts_ns, arrival + i, line)],
      line being json.dumps(record, sort_keys=True) + "\\n" of that record plus its container,
      made without the record. `containers` maps hdr.cgroup_id to the container member's JSON
      text with its separator (`"container": {...}, ` when `container_first`, else
      `, "container": {...}`; "" for none); `tail` holds the JSON texts of the event's name,
      program, schema_version and host. None when a member name is not a plain identifier or
      repeats a stream key (then the stream encodes the record).
    """

    fmt: str
    rows: RowsReader
    lines: LinesReader | None
    cgroup_index: int
    container_first: bool

    def row_struct(self, stride: int) -> struct.Struct:
        return struct.Struct(f"=8x{self.fmt[1:]}{stride - 8 - struct.calcsize(self.fmt)}x")


def _compile_batches(layout: struct.Struct, fields: list[_Field], containers: list[tuple[int, str]],
                     ip_fixups: list[tuple[int, str, list[str]]], event: str) -> Batches | None:
    hdr = _hdr_members(fields, containers)
    if hdr is None:
        return None
    ts, cgroup = hdr
    value = _values(fields, ip_fixups)
    namespace = _namespace(layout, fields)
    body = _display(fields, containers, value)
    stream_keys = (f"'time_ns': (w := v[{ts}] + offset_ns), 'time': f\"{{seconds[w // {_NS}]}}.{{w % {_NS}:09d}}Z\", "
                   "'program': program, 'schema_version': version, 'host': {'name': host}")
    body = "{" + f"'event': {event!r}, " + body[1:-1] + (", " if body != "{}" else "") + stream_keys + "}"
    rows = _compile(["def rows(rows, offset_ns, seconds, program, version, host, arrival):",
                     f"    return [(v[{ts}], arrival + i, {body}) for i, v in enumerate(rows)]"],
                    namespace, "rows", event)
    found = _json_display(fields, containers, value, ts, cgroup)
    lines, first = None, True
    if found is not None:
        namespace["LINE"], args, first = found
        made = f"(v[{ts}], arrival + i, LINE % ({', '.join(args)}))"
        lines = _compile(["def lines(rows, offset_ns, seconds, arrival, containers, tail):",
                          f"    return [{made} for i, v in enumerate(rows)]"], namespace, "lines", f"{event} json")
    return Batches(layout.format, rows, lines, cgroup, first)


def _json_display(fields: list[_Field], containers: list[tuple[int, str]], value: dict[tuple[int, str], str],
                  ts: int, cgroup: int) -> tuple[str, list[str], bool] | None:
    """The stream record's JSON with sorted keys and the json module's separators as a %-format
    and the expressions of its arguments, and whether the optional container member comes first.
    Names enter the format only when they are plain ASCII identifiers (nothing to escape, no %);
    values are integers (%d) or text the json module escaped (%s)."""
    members = {owner_key: (index, code, size, post) for index, (_, code, size, owner_key, post) in enumerate(fields)}

    def member(owner: int, key: str) -> tuple[str, list[str]]:
        index, code, size, post = members[(owner, key)]
        expr = value[(owner, key)]
        if expr.startswith("_ip(") or (post is not None and not isinstance(post, _ListOfStrings)
                                       and post not in (_c_string, bytes.hex)):
            return "%s", [f"_json_any({expr})"]  # an address, or an enum's name (a number without one)
        if isinstance(post, _ListOfStrings):
            return "%s", [f"_json_list({expr})"]
        if post is _c_string:
            return "%s", [f"small_json[v[{index}]]" if size <= _SMALL else f"esc({expr})"]
        if post is bytes.hex:
            return '"%s"', [expr]
        return ("%s", [f"TF[{expr}]"]) if code == "?" else ("%d", [expr])

    def obj(container: int, items: dict[str, tuple[str, list[str]]]) -> tuple[str, list[str]] | None:
        for child, (parent, key) in enumerate(containers):
            if parent == container and child:
                nested = obj(child, {})
                if nested is None or key in items:
                    return None
                items[key] = nested
        for _, _, _, (owner, key), _ in fields:
            if owner == container:
                if key in items:
                    return None
                items[key] = member(owner, key)
        if not all(key.isidentifier() and key.isascii() for key in items):
            return None
        keys = sorted(items)
        text = "{" + ", ".join(f'"{key}": {items[key][0]}' if key != "container" else "\0" for key in keys) + "}"
        return text, [arg for key in keys for arg in items[key][1]]

    top = {"event": ("%s", ["tail[0]"]), "program": ("%s", ["tail[1]"]), "schema_version": ("%s", ["tail[2]"]),
           "host": ("%s", ["tail[3]"]), "container": ("", [f"containers[v[{cgroup}]]"]),
           "time": ('"%s.%09dZ"', [f"seconds[(w := v[{ts}] + offset_ns) // {_NS}]", f"w % {_NS}"]),
           "time_ns": ("%d", ["w"])}  # "time" sorts before "time_ns", which reuses its w
    found = obj(0, top)
    if found is None:
        return None
    text, args = found
    first = text.startswith("{\0")
    # The container member is optional: its text, separator included, is the argument `containers` gives.
    return text.replace("\0, " if first else ", \0", "%s") + "\n", args, first


class _Decoded(dict[bytes, str]):
    """A small char array's bytes -> its string (`json`: as JSON text), remembered: comm and the
    like repeat from record to record, so one lookup replaces partition, decode (and escape)."""

    def __init__(self, json: bool) -> None:
        super().__init__()
        self.json = json

    def __missing__(self, raw: bytes) -> str:
        if len(self) >= 4096:
            self.clear()
        text = raw.partition(b"\0")[0].decode("utf-8", "replace")
        self[raw] = text = encode_basestring_ascii(text) if self.json else text
        return text


_SMALL = 32  # char arrays up to this size are decoded through _Decoded
_SMALL_TEXT, _SMALL_JSON = _Decoded(json=False), _Decoded(json=True)


def _json_list(items: list[str]) -> str:
    return "[" + ", ".join(map(encode_basestring_ascii, items)) + "]"


# A record's JSON text as `watch` writes it (json.dumps(record, sort_keys=True)): what the stream
# encodes records with, and what a compiled line uses for a member it does not spell itself, so the
# two can never differ.
encode_json = json.JSONEncoder(sort_keys=True).encode


def _strings(raw: bytes, length: Any) -> list[str]:
    used = raw[:length] if isinstance(length, int) else raw
    return [part.decode(errors="replace") for part in used.rstrip(b"\0").split(b"\0")] if used.strip(b"\0") else []


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return bytes.fromhex(value)
    if isinstance(value, int):
        return value.to_bytes(4, _ORDER)
    return b""


def _ip(family: Any, chunk: bytes, fallback: Any) -> Any:
    if family == socket.AF_INET and len(chunk) >= 4:
        return str(ipaddress.IPv4Address(chunk[:4]))
    if family == socket.AF_INET6 and len(chunk) >= 16:
        return str(ipaddress.IPv6Address(chunk[:16]))
    return fallback


class Schema:
    """Decoders of every event type an object declares, plus the counters' per-type names."""

    def __init__(self, events: dict[int, EventLayout], type_names: dict[int, str], counter: Decoder | None) -> None:
        self.events = events
        self.type_names = type_names
        self.counter = counter

    def decode(self, data: bytes) -> dict[str, Any]:
        return self.decode_at(data, 0, len(data))

    def decode_at(self, buffer: Any, offset: int, length: int) -> dict[str, Any]:
        """The record of `length` bytes at `offset` of `buffer` (bytes, or a ring's memoryview:
        decoded in place, nothing copied unless the record is shorter than its layout)."""
        type_value = _TYPE.unpack_from(buffer, offset)[0] if length >= 4 else 0
        layout = self.events.get(type_value)
        if layout is None:
            return {"event": "unknown", "type": type_value, "size": length}
        if length < layout.size:
            return layout.record(bytes(buffer[offset:offset + length]).ljust(layout.size, b"\0"))
        return layout.record(buffer, offset)

    def stream_at(self, buffer: Any, offset: int, length: int, offset_ns: int, rfc3339: Callable[[int], str],
                  program: str, version: str, host: str) -> tuple[int, int, dict[str, Any]]:
        """(hdr.ts_ns, hdr.cgroup_id, record) where the record is `decode_at`'s plus what a stream
        adds (docs/EVENTS.md): time_ns (ts_ns + offset_ns), time (rfc3339 of it), program,
        schema_version and host. A layout's compiled function does it all in one expression."""
        type_value = _TYPE.unpack_from(buffer, offset)[0] if length >= 4 else 0
        layout = self.events.get(type_value)
        if layout is not None and layout.stream is not None and length >= layout.size:
            return layout.stream(buffer, offset, offset_ns, rfc3339, program, version, host)
        record = self.decode_at(buffer, offset, length)
        hdr = record.get("hdr")
        ts, cgroup = (hdr.get("ts_ns", 0), hdr.get("cgroup_id", 0)) if isinstance(hdr, dict) else (0, 0)
        wall = ts + offset_ns
        record.update({"time_ns": wall, "time": rfc3339(wall), "program": program, "schema_version": version,
                       "host": {"name": host}})
        return ts, cgroup, record


def _general_record(name: str, size: int, decode: Decoder) -> Reader:
    def record(buffer: Any, offset: int = 0) -> dict[str, Any]:
        return {"event": name, **decode(bytes(buffer[offset:offset + size]))}
    return record


def schema_from_btf(lib: lb.Libbpf, btf: int) -> Schema:
    view = _Btf(lib, btf)
    enum_id = view.find(_ENUM, "hids_event_type") or view.find(_ENUM64, "hids_event_type")
    if enum_id is None:
        raise LoadError("object BTF has no enum hids_event_type (see hids_schema_anchor in docs/DESIGN.md)")
    type_names: dict[int, str] = {}
    events: dict[int, EventLayout] = {}
    for value, enum_name in view.enum_values(enum_id).items():
        if not enum_name.startswith("HIDS_EV_"):
            continue
        short = enum_name[len("HIDS_EV_"):].lower()
        type_names[value] = short
        struct_id = view.find(_STRUCT, f"hids_ev_{short}")
        if struct_id is not None:
            size = view.size(struct_id)
            record = view.fast_decoder(struct_id, short) or _general_record(short, size, view.decoder(struct_id))
            stream = cast("StreamReader | None", view.fast_decoder(struct_id, short, stream=True))
            events[value] = EventLayout(short, value, size, record, stream, view.fast_batches(struct_id, short))
    counter_id = view.find(_STRUCT, "hids_counter")
    return Schema(events, type_names, view.decoder(counter_id) if counter_id else None)


def schema_from_object(lib: lb.Libbpf, data: bytes, label: str) -> Schema:
    """Parse the BTF of an object from the bytes whose hash was checked, never from its path again:
    a file swapped after the check must not decide how events are decoded. libbpf parses ELF
    only from a path, so the bytes go to a memfd it reads through /proc/self/fd."""
    fd = os.memfd_create("hids-object", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        btf = lib.btf__parse_elf(f"/proc/self/fd/{fd}".encode(), None)
    finally:
        os.close(fd)
    if not btf:
        _, text = lb.errno_text()
        raise LoadError(f"cannot read BTF of {label}: {text}")
    try:
        return schema_from_btf(lib, btf)
    finally:
        lib.btf__free(btf)


def schema_from_object_file(lib: lb.Libbpf, path: Path) -> Schema:
    """`schema_from_object` of a file, for objects that are the caller's own (tests, tools)."""
    return schema_from_object(lib, path.read_bytes(), str(path))
