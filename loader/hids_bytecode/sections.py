"""ELF section prefixes of BPF programs, as libbpf names them: the one table the build side's
validator (which refuses any other section) and the loader's attach policy (which tries kprobe
hooks before tracepoint ones) both read."""

from __future__ import annotations

__all__ = ["SECTIONS", "attach_type", "hook_type_of", "HOOK_TYPE_ORDER"]

HOOK_TYPE_ORDER = ("kprobe", "tracepoint", "other")

# Section prefix (before the first "/") -> (libbpf attach type, hook type).
SECTIONS: dict[str, tuple[str, str]] = {
    "kprobe": ("kprobe", "kprobe"),
    "kretprobe": ("kretprobe", "kprobe"),
    "ksyscall": ("ksyscall", "kprobe"),
    "kretsyscall": ("kretsyscall", "kprobe"),
    "tracepoint": ("tracepoint", "tracepoint"),
    "tp": ("tracepoint", "tracepoint"),
    "raw_tracepoint": ("raw_tracepoint", "tracepoint"),
    "raw_tp": ("raw_tracepoint", "tracepoint"),
    "tp_btf": ("tp_btf", "tracepoint"),
    "fentry": ("fentry", "other"),
    "fexit": ("fexit", "other"),
}


def attach_type(section: str) -> str | None:
    """libbpf's attach type of a `<prefix>/<target>` section, or None for any other section."""
    prefix, slash, _ = section.partition("/")
    known = SECTIONS.get(prefix) if slash else None
    return known[0] if known else None


def hook_type_of(section: str) -> str:
    known = SECTIONS.get(section.split("/", 1)[0])
    return known[1] if known else "other"
