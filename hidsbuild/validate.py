"""Validation of a compiled object with pyelftools, and what the manifest needs to know of it."""

from __future__ import annotations

import io
from dataclasses import dataclass

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from hids_bytecode.sections import SECTIONS, attach_type

__all__ = ["ObjectInfo", "InvalidObject", "validate_object"]


class InvalidObject(Exception):
    pass


@dataclass(frozen=True)
class ObjectInfo:
    programs: tuple[dict[str, str], ...]  # {"name", "section", "type"}
    maps: tuple[str, ...]
    license: str


def validate_object(data: bytes) -> ObjectInfo:
    """Check that `data` is a loadable-looking BPF object; raise InvalidObject with the reason."""
    try:
        elf = ELFFile(io.BytesIO(data))
        sections = {s.name: s for s in elf.iter_sections()}
    except (ELFError, ValueError) as exc:
        raise InvalidObject(f"not an ELF object: {exc}") from None
    if elf["e_machine"] != "EM_BPF":
        raise InvalidObject(f"machine type is {elf['e_machine']}, not EM_BPF")
    lic = sections.get("license")
    if lic is None or not lic.data().rstrip(b"\0"):
        raise InvalidObject("no license section")
    for required in (".BTF", ".BTF.ext"):
        if required not in sections:
            raise InvalidObject(f"no {required} section (BTF is needed to read maps and events)")
    if ".maps" not in sections and "maps" not in sections:
        raise InvalidObject("no maps section")
    dwarf = sorted(name for name in sections if name.startswith(".debug_"))
    if dwarf:
        raise InvalidObject(f"DWARF left in the object: {', '.join(dwarf)}")

    exec_sections = {
        name for name, s in sections.items() if s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and s["sh_size"] > 0
    }
    for name in sorted(exec_sections - {".text"}):
        if attach_type(name) is None:
            raise InvalidObject(f"program section {name!r} is of no known type ({', '.join(SECTIONS)})")

    symtab = elf.get_section_by_name(".symtab")
    if not isinstance(symtab, SymbolTableSection):
        raise InvalidObject("no symbol table")
    programs: list[dict[str, str]] = []
    maps: list[str] = []
    for sym in symtab.iter_symbols():
        shndx = sym["st_shndx"]
        if shndx == "SHN_UNDEF":
            if sym.name:
                raise InvalidObject(f"unresolved extern symbol {sym.name!r}")
            continue
        if not isinstance(shndx, int):
            continue
        section = elf.get_section(shndx).name
        kind = sym["st_info"]["type"]
        if kind == "STT_FUNC" and section in exec_sections and section != ".text":
            programs.append({"name": sym.name, "section": section, "type": attach_type(section) or ""})
        elif kind == "STT_OBJECT" and section in (".maps", "maps"):
            maps.append(sym.name)
    if not programs:
        raise InvalidObject("no program")
    license_text = lic.data().split(b"\0", 1)[0].decode(errors="replace")
    return ObjectInfo(tuple(sorted(programs, key=lambda p: p["name"])), tuple(sorted(maps)), license_text)
