"""Event decoding derived from a real object's BTF: the fast (one struct.unpack) and the general
(member by member) decoders agree, strings and IP addresses come out as the conventions say."""

# ruff: noqa: E402
from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from hids_bytecode import libbpf
from hids_bytecode.btf_layout import _Btf, schema_from_object_file
from hids_bytecode.manifest import load_manifest

_STRUCT = 4


@pytest.fixture(scope="module")
def mini_object(loader_data: Path) -> Path:
    return next(e for e in load_manifest(loader_data).entries if e.program == "mini").object_path


def _connect(family: int, address: bytes) -> bytes:
    hdr = struct.pack("@IIQIIIIIQ16s", 3, 0, 1, 2, 2, 1, 0, 0, 7, b"curl")
    return hdr + struct.pack("=HH16s", family, 443, address.ljust(16, b"\0"))


def test_decoded_events_follow_the_conventions(mini_object: Path) -> None:
    schema = schema_from_object_file(libbpf.get(), mini_object)
    assert schema.type_names == {1: "exec", 2: "open", 3: "connect", 4: "max"}
    v4 = schema.decode(_connect(socket.AF_INET, bytes([192, 0, 2, 7])))
    assert (v4["event"], v4["daddr"], v4["hdr"]["comm"], v4["hdr"]["tgid"]) == ("connect", "192.0.2.7", "curl", 2)
    v6 = schema.decode(_connect(socket.AF_INET6, bytes.fromhex("20010db8" + "0" * 23 + "1")))
    assert v6["daddr"] == "2001:db8::1"
    assert schema.decode(struct.pack("=I", 99)) == {"event": "unknown", "type": 99, "size": 4}


def test_argv_with_a_length_becomes_a_list(mini_object: Path) -> None:
    schema = schema_from_object_file(libbpf.get(), mini_object)
    hdr = struct.pack("@IIQIIIIIQ16s", 1, 0, 1, 2, 2, 1, 0, 0, 7, b"sh")
    argv = b"ls\0-l\0/tmp\0"
    event = schema.decode(hdr + struct.pack("@II128s64s", 3, len(argv), b"/bin/ls", argv + b"junk"))
    assert (event["filename"], event["argc"], event["argv"]) == ("/bin/ls", 3, ["ls", "-l", "/tmp"])


def test_fast_and_general_decoders_agree(mini_object: Path) -> None:
    lib = libbpf.get()
    btf = lib.btf__parse_elf(str(mini_object).encode(), None)
    try:
        view = _Btf(lib, btf)
        for name in ("hids_ev_exec", "hids_ev_open", "hids_ev_connect", "hids_hdr", "hids_counter"):
            type_id = view.find(_STRUCT, name)
            size = view.size(type_id)
            blob = bytearray((i * 37 + 11) % 256 for i in range(size))
            if name == "hids_ev_exec":
                blob[68:72] = (20).to_bytes(4, sys.byteorder)  # argv_len inside argv
            blob = bytes(blob)
            fast = view.fast_decoder(type_id)
            assert fast is not None and fast(blob) == view.decoder(type_id)(blob), name
    finally:
        lib.btf__free(btf)
