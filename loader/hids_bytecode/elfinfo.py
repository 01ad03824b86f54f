"""What a BPF object holds, read from its ELF section headers and symbol table with the standard
library: the same inventory the build records in the manifest (hidsbuild/validate.py), so the
loader can check an object against its entry before libbpf ever sees it."""

from __future__ import annotations

import struct

from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["ElfError", "Inventory", "inventory", "EM_BPF"]

EM_BPF = 247
_SHF_EXECINSTR = 0x4
_SHT_SYMTAB = 2
_STT_OBJECT, _STT_FUNC = 1, 2
_SHN_LORESERVE = 0xFF00


class ElfError(ValueError):
    """The bytes are not a 64-bit relocatable BPF ELF object; `str()` says why."""


class Inventory(Record):  # a Record, not a dataclass: integrity checks every selected object (records.py)
    __slots__ = ("programs", "maps")

    def __init__(self, programs: frozenset[tuple[str, str]], maps: frozenset[str]) -> None:
        self.programs: Final = programs  # (function name, section)
        self.maps: Final = maps


def _unpack(fmt: str, data: bytes, offset: int) -> tuple[int, ...]:  # every format here is integers
    if offset < 0 or offset + struct.calcsize(fmt) > len(data):
        raise ElfError("truncated ELF (a header points past the end)")
    return struct.unpack_from(fmt, data, offset)


def _name(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        raise ElfError("a name points outside its string table")
    return table[offset:end].decode("utf-8", "replace")


def inventory(data: bytes) -> Inventory:
    """Programs (functions in executable sections other than .text) and maps (objects in .maps)."""
    if data[:4] != b"\x7fELF" or len(data) < 64:
        raise ElfError("not an ELF file")
    if data[4] != 2 or data[5] not in (1, 2):
        raise ElfError("not a 64-bit ELF object")
    order = "<" if data[5] == 1 else ">"
    (e_type, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = _unpack(
        order + "HHIQQQIHHHHHH", data, 16)
    if machine != EM_BPF:
        raise ElfError(f"ELF machine {machine} is not EM_BPF ({EM_BPF})")
    if e_type != 1 or shentsize != 64 or not 0 < shstrndx < shnum:
        raise ElfError("not a relocatable object with section headers")
    sections = [_unpack(order + "IIQQQQIIQQ", data, shoff + i * 64) for i in range(shnum)]

    def body(index: int) -> bytes:
        if not 0 <= index < len(sections):
            raise ElfError(f"section index {index} out of range")
        offset, size = sections[index][4], sections[index][5]
        if offset + size > len(data):
            raise ElfError("a section extends past the end of the file")
        return data[offset:offset + size]

    shstr = body(shstrndx)
    names = [_name(shstr, s[0]) for s in sections]
    symtabs = [i for i, s in enumerate(sections) if s[1] == _SHT_SYMTAB]
    if len(symtabs) != 1:
        raise ElfError("no single symbol table")
    symtab, strtab = body(symtabs[0]), body(sections[symtabs[0]][6])
    programs, maps = set(), set()
    for offset in range(24, len(symtab) - 23, 24):  # entry 0 is the null symbol
        st_name, st_info, _, shndx, _, _ = _unpack(order + "IBBHQQ", symtab, offset)
        if shndx == 0 or shndx >= _SHN_LORESERVE:
            continue
        if shndx >= len(sections):
            raise ElfError(f"symbol in section {shndx}, of {len(sections)}")
        section, kind = names[shndx], st_info & 0xF
        flags, size = sections[shndx][2], sections[shndx][5]
        if kind == _STT_FUNC and flags & _SHF_EXECINSTR and size > 0 and section != ".text":
            programs.add((_name(strtab, st_name), section))
        elif kind == _STT_OBJECT and section in (".maps", "maps"):
            maps.add(_name(strtab, st_name))
    return Inventory(frozenset(programs), frozenset(maps))
