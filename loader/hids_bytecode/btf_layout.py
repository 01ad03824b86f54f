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
import os
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from . import libbpf as lb
from .errors import LoadError

__all__ = ["EventLayout", "Schema", "schema_from_object", "schema_from_object_file", "schema_from_btf"]

_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_MODIFIERS = {9, 10, 11, 18}  # volatile, const, restrict, type_tag: no layout of their own
_ENUM64 = 19
_ORDER = sys.byteorder

Decoder = Callable[[bytes], Any]


@dataclass(frozen=True)
class EventLayout:
    name: str  # "exec" for struct hids_ev_exec
    type_value: int
    size: int
    decode: Decoder


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

    def fast_decoder(self, type_id: int) -> Decoder | None:
        """One struct.unpack_from per event for the common case (no bitfields, unions or arrays of
        non-byte types): several times the throughput of the member-by-member decoder."""
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
        layout = struct.Struct(fmt)
        plan = [(index, key, post) for _, _, _, (index, key), post in fields]
        width = len(containers)

        def decode(b: bytes) -> dict[str, Any]:
            dicts: list[dict[str, Any]] = [{} for _ in range(width)]
            for i in range(1, width):
                parent, key = containers[i]
                dicts[parent][key] = dicts[i]
            lists: list[tuple[dict[str, Any], str, str, bytes]] = []  # (dict, key, length key, raw chars)
            for (index, key, post), value in zip(plan, layout.unpack_from(b)):
                if isinstance(post, _ListOfStrings):
                    lists.append((dicts[index], key, post.length_key, value))
                    continue
                dicts[index][key] = post(value) if post else value
            for d, key, length_key, raw in lists:
                d[key] = _strings(raw, d.get(length_key))
            for index, family_key, addr_keys in ip_fixups:
                d = dicts[index]
                for key in addr_keys:
                    d[key] = _ip(d.get(family_key), _as_bytes(d[key]), d[key])
            return dicts[0]

        return decode

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
        type_value = int.from_bytes(data[:4], _ORDER)
        layout = self.events.get(type_value)
        if layout is None:
            return {"event": "unknown", "type": type_value, "size": len(data)}
        padded = data.ljust(layout.size, b"\0")
        return {"event": layout.name, **layout.decode(padded)}


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
            decode = view.fast_decoder(struct_id) or view.decoder(struct_id)
            events[value] = EventLayout(short, value, view.size(struct_id), decode)
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
