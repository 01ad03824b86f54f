"""ctypes binding of the system libbpf.so.1 (the few calls the loader needs), modelled on
gregclermont/tinybpf. libbpf >= 1.0 semantics: pointer calls return NULL and set errno, int calls
return -errno. Every message libbpf prints goes through one callback and is kept, so errors can
quote libbpf (and the verifier) instead of leaving it on stderr.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import LibbpfMissing
from .safefs import trusted_executable

__all__ = ["Libbpf", "get", "capture", "RINGBUF_SAMPLE_FN", "PERF_SAMPLE_FN", "PERF_LOST_FN",
           "BTF_TYPE", "BTF_MEMBER", "BTF_ENUM", "BTF_ARRAY", "MAP_INFO", "OBJECT_OPEN_OPTS", "errno_text"]

_c = ctypes
_vp, _cp, _int, _sz = _c.c_void_p, _c.c_char_p, _c.c_int, _c.c_size_t

# int (*)(enum libbpf_print_level, const char *fmt, va_list): a va_list arrives as a pointer on
# x86_64 (array type) and aarch64 (a 32-byte struct passed by reference) alike.
_PRINT_FN = _c.CFUNCTYPE(_int, _int, _cp, _vp)
RINGBUF_SAMPLE_FN = _c.CFUNCTYPE(_int, _vp, _vp, _sz)
PERF_SAMPLE_FN = _c.CFUNCTYPE(None, _vp, _int, _vp, _c.c_uint32)
PERF_LOST_FN = _c.CFUNCTYPE(None, _vp, _int, _c.c_uint64)
_LEVELS = {0: "warn", 1: "info", 2: "debug"}
_PRINT_BUF_SIZE = 16 << 20


class BTF_TYPE(_c.Structure):
    _fields_ = [("name_off", _c.c_uint32), ("info", _c.c_uint32), ("size_or_type", _c.c_uint32)]


class BTF_MEMBER(_c.Structure):
    _fields_ = [("name_off", _c.c_uint32), ("type", _c.c_uint32), ("offset", _c.c_uint32)]


class BTF_ENUM(_c.Structure):
    _fields_ = [("name_off", _c.c_uint32), ("val", _c.c_int32)]


class BTF_ARRAY(_c.Structure):
    _fields_ = [("type", _c.c_uint32), ("index_type", _c.c_uint32), ("nelems", _c.c_uint32)]


class MAP_INFO(_c.Structure):
    _fields_ = [("type", _c.c_uint32), ("id", _c.c_uint32), ("key_size", _c.c_uint32),
                ("value_size", _c.c_uint32), ("max_entries", _c.c_uint32), ("map_flags", _c.c_uint32),
                ("name", _c.c_char * 16), ("rest", _c.c_uint8 * 64)]


class OBJECT_OPEN_OPTS(_c.Structure):
    """struct bpf_object_open_opts up to btf_custom_path: libbpf reads only the `sz` bytes given."""

    _fields_ = [("sz", _sz), ("object_name", _cp), ("relaxed_maps", _c.c_bool), ("pin_root_path", _cp),
                ("_attach_prog_fd", _c.c_uint32), ("kconfig", _cp), ("btf_custom_path", _cp)]


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (_vp, [_PRINT_FN]),
    "libbpf_strerror": (_int, [_int, _c.c_char_p, _sz]),
    "libbpf_num_possible_cpus": (_int, []),
    "bpf_object__open_mem": (_vp, [_vp, _sz, _vp]),
    "bpf_object__load": (_int, [_vp]),
    "bpf_object__close": (None, [_vp]),
    "bpf_object__btf": (_vp, [_vp]),
    "bpf_object__next_program": (_vp, [_vp, _vp]),
    "bpf_object__next_map": (_vp, [_vp, _vp]),
    "bpf_object__find_map_by_name": (_vp, [_vp, _cp]),
    "bpf_program__name": (_cp, [_vp]),
    "bpf_program__section_name": (_cp, [_vp]),
    "bpf_program__attach": (_vp, [_vp]),
    "bpf_program__pin": (_int, [_vp, _cp]),
    "bpf_map__name": (_cp, [_vp]),
    "bpf_map__fd": (_int, [_vp]),
    "bpf_map__type": (_int, [_vp]),
    "bpf_map__value_size": (_c.c_uint32, [_vp]),
    "bpf_map__pin": (_int, [_vp, _cp]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, _c.c_uint64]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
    "bpf_obj_get": (_int, [_cp]),
    "bpf_obj_get_info_by_fd": (_int, [_int, _vp, _c.POINTER(_c.c_uint32)]),
    "bpf_link__pin": (_int, [_vp, _cp]),
    "bpf_link__destroy": (_int, [_vp]),
    "ring_buffer__new": (_vp, [_int, RINGBUF_SAMPLE_FN, _vp, _vp]),
    "ring_buffer__poll": (_int, [_vp, _int]),
    "ring_buffer__free": (None, [_vp]),
    "ring_buffer__consume": (_int, [_vp]),
    "ring_buffer__epoll_fd": (_int, [_vp]),
    "perf_buffer__new": (_vp, [_int, _sz, PERF_SAMPLE_FN, PERF_LOST_FN, _vp, _vp]),
    "perf_buffer__poll": (_int, [_vp, _int]),
    "perf_buffer__free": (None, [_vp]),
    "perf_buffer__consume": (_int, [_vp]),
    "perf_buffer__epoll_fd": (_int, [_vp]),
    "btf__parse_elf": (_vp, [_cp, _vp]),
    "btf__free": (None, [_vp]),
    "btf__type_cnt": (_c.c_uint32, [_vp]),
    "btf__type_by_id": (_c.POINTER(BTF_TYPE), [_vp, _c.c_uint32]),
    "btf__name_by_offset": (_cp, [_vp, _c.c_uint32]),
    "btf__resolve_size": (_c.c_longlong, [_vp, _c.c_uint32]),
}

_messages: list[tuple[str, str]] = []
_capturing = 0
_echo = False


class Libbpf:
    """The loaded library: attributes are the typed libbpf functions."""

    if TYPE_CHECKING:  # the functions of _SIGNATURES, set in __init__: ctypes callables, typed at run time
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, path: str) -> None:
        try:
            self.lib = _c.CDLL(path, use_errno=True)
        except OSError as exc:
            raise LibbpfMissing(f"cannot load {path}: {exc} "
                                "(install libbpf1 on Debian/Ubuntu, libbpf on RPM distros)") from None
        libc = _c.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self._vsnprintf = libc.vsnprintf
        self._vsnprintf.restype = _int
        self._vsnprintf.argtypes = [_vp, _sz, _cp, _vp]
        # A va_list can be formatted once only, and libbpf prints a whole verifier log (up to its
        # 16 MiB log buffer) in one message whose end holds the complaint: format into one buffer
        # that large, from malloc so only the pages written become resident.
        libc.malloc.restype = _vp
        libc.malloc.argtypes = [_sz]
        self._print_buf = libc.malloc(_PRINT_BUF_SIZE)
        for name, (restype, argtypes) in _SIGNATURES.items():
            try:
                fn = getattr(self.lib, name)
            except AttributeError:
                raise LibbpfMissing(f"{path} lacks {name}; libbpf >= 1.0 is needed (libbpf1)") from None
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)
        self._print_cb = _PRINT_FN(self._on_print)  # kept referenced: libbpf holds the pointer
        self.libbpf_set_print(self._print_cb)

    def _on_print(self, level: int, fmt: bytes, args: int) -> int:
        written = self._vsnprintf(self._print_buf, _PRINT_BUF_SIZE, fmt, args)
        raw = _c.string_at(self._print_buf, max(0, min(written, _PRINT_BUF_SIZE - 1)))
        text = raw.decode(errors="replace").rstrip("\n")
        if _capturing:
            _messages.append((_LEVELS.get(level, str(level)), text))
        if _echo:
            print(text, file=sys.stderr)
        return 0

    def strerror(self, err: int) -> str:
        buf = _c.create_string_buffer(256)
        self.libbpf_strerror(abs(err), buf, len(buf))
        return buf.value.decode(errors="replace") or os.strerror(abs(err))


def errno_text() -> tuple[int, str]:
    err = _c.get_errno()
    return err, os.strerror(err)


_instance: Libbpf | None = None


def get(path: str | None = None, echo: bool = False) -> Libbpf:
    """The process-wide binding; `echo` also copies libbpf's messages to stderr."""
    global _instance, _echo
    _echo = _echo or echo
    if _instance is None:
        _instance = Libbpf(path or _library_from_environment() or "libbpf.so.1")
    return _instance


def _library_from_environment() -> str | None:
    """HIDS_LIBBPF, honoured only for a root-owned library only root can change: loading a library
    runs its code, and the loader runs as root (docs/THREAT_MODEL.md)."""
    named = os.environ.get("HIDS_LIBBPF")
    if not named:
        return None
    if os.path.isabs(named) and not os.path.lexists(named):
        raise LibbpfMissing(f"cannot load {named}: no such file "
                            "(install libbpf1 on Debian/Ubuntu, libbpf on RPM distros)")
    trusted = trusted_executable(Path(named), executable=False) if os.path.isabs(named) else None
    if trusted is None:
        raise LibbpfMissing(f"HIDS_LIBBPF={named}: refused: not an absolute path to a root-owned library "
                        "that only root can change")
    return str(trusted)


@contextmanager
def capture() -> Iterator[list[tuple[str, str]]]:
    """Messages libbpf printed while the block ran."""
    global _capturing
    start = len(_messages)
    collected: list[tuple[str, str]] = []
    _capturing += 1
    try:
        yield collected
    finally:
        _capturing -= 1
        collected.extend(_messages[start:])
        del _messages[start:]  # kept only while a capture wants them: a long watch must not grow
