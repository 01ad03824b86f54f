"""Host facts and selection over real release strings and kallsyms samples of several distros and
eras. Those kernels cannot run here, so their /proc/kallsyms and uname strings are small fixture
files (tests/data/loader/) and `uname` is passed in: the one stand-in in these tests."""

# ruff: noqa: E402
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import LOADER_DATA
from hids_bytecode.errors import (
    BtfUnavailable,
    KallsymsUnavailable,
    KallsymsUndecided,
    NoMatch,
    UnknownArch,
    UnknownRelease,
)
from hids_bytecode.hostinfo import gather
from hids_bytecode.kallsyms import detect_syscall_wrapper
from hids_bytecode.kversion import parse_release, upstream_version
from hids_bytecode.manifest import Entry, Manifest
from hids_bytecode.selection import select

KALLSYMS = LOADER_DATA / "kallsyms"
RELEASES = json.loads((LOADER_DATA / "releases.json").read_text())


@pytest.mark.parametrize("case", RELEASES, ids=[c["host"] for c in RELEASES])
def test_upstream_version_from_where_each_distro_hides_it(case: dict) -> None:
    version = upstream_version(case["release"], case["uname_v"], case["signature"])
    assert (str(version), version.source) == (case["version"], case["source"])


@pytest.mark.parametrize("release", ["", "generic", "v6.1", "linux-6.1.0"])
def test_release_without_a_version_is_refused(release: str) -> None:
    with pytest.raises(UnknownRelease):
        parse_release(release)


@pytest.mark.parametrize("sample, wrapper, symbol", [
    ("debian-bookworm-6.1-x86_64", True, "__ia32_sys_openat"),
    ("debian-bullseye-5.10-arm64", True, "__arm64_sys_openat"),
    ("kptr-restricted-6.12-x86_64", True, "__x64_sys_execve"),
    ("ubuntu-xenial-4.4-x86_64", False, "SyS_open"),
    ("centos7-3.10-x86_64", False, "SyS_open"),
])
def test_syscall_wrapper_from_first_decisive_symbol(sample: str, wrapper: bool, symbol: str) -> None:
    fact = detect_syscall_wrapper(KALLSYMS / sample)
    assert (fact.wrapper, fact.symbol) == (wrapper, symbol)
    assert fact.addresses_hidden == sample.startswith("kptr")


def test_kallsyms_scan_stops_at_the_first_decisive_line() -> None:
    # A pipe whose writer never closes: a scan that read on to the end would never return.
    read_end, write_end = os.pipe()
    os.write(write_end, (KALLSYMS / "centos7-3.10-x86_64").read_bytes())
    result: list = []
    scan = threading.Thread(target=lambda: result.append(detect_syscall_wrapper(Path(f"/proc/self/fd/{read_end}"))),
                            daemon=True)
    scan.start()
    scan.join(60)  # a guard against hanging the suite, not a timing assertion
    os.close(write_end)
    os.close(read_end)
    assert result and result[0].line == 4


def test_kallsyms_missing_or_undecided(tmp_path: Path) -> None:
    with pytest.raises(KallsymsUnavailable):
        detect_syscall_wrapper(tmp_path / "absent")
    with pytest.raises(KallsymsUndecided):
        detect_syscall_wrapper(KALLSYMS / "no-syscall-symbols")


def test_this_host_facts_name_their_sources() -> None:
    facts = gather()
    assert facts.release == os.uname().release
    assert facts.wrapper.symbol.endswith(("_sys_openat", "_sys_open", "_sys_execve"))
    assert {f.name for f in facts.facts} == {"arch", "release", "version", "syscall_wrapper", "btf", "distro"}
    assert all(f.source for f in facts.facts)


def _uname(release: str, version: str, machine: str = "x86_64") -> os.uname_result:
    return os.uname_result(("Linux", "host", release, version, machine))


def test_unknown_arch_is_refused() -> None:
    with pytest.raises(UnknownArch, match="riscv64"):
        gather(_uname("6.1.0-50-riscv64", "#1", "riscv64"), kallsyms=KALLSYMS / "debian-bookworm-6.1-x86_64")


def _entry(program: str, kind: str, release: str | None, arch: str, wrapper: bool, debug: bool) -> Entry:
    target = release or f"core-{arch}"
    raw = {"unit": f"{program}/{target}/w{int(wrapper)}d{int(debug)}", "program": program, "kind": kind,
           "kernel": {"release": release, "arch": arch}, "variant": {"syscall_wrapper": wrapper, "debug": debug},
           "object": "objects/x.o", "sha256": "0" * 64, "programs": [], "maps": []}
    return Entry(raw, Path("/nonexistent"))


def _manifest() -> Manifest:
    entries = [
        _entry("file", "exact", release, arch, wrapper, debug)
        for release, arch in [("6.1.0-50-cloud-amd64", "x86_64"), ("5.10.0-32-cloud-amd64", "x86_64"),
                              ("6.1.0-50-cloud-arm64", "aarch64")]
        for wrapper in (True, False) for debug in (False, True)
    ]
    entries += [_entry("file", "core", None, arch, True, debug)
                for arch in ("x86_64", "aarch64") for debug in (False, True)]
    return Manifest(Path("/nonexistent/manifest.json"), "1", "h", tuple(entries))


# (uname release, uname -v, arch, kallsyms sample, host has BTF) -> expected stage and unit
SELECTION_TABLE = [
    ("6.1.0-50-cloud-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.176-1 (2026-05-01)", "x86_64",
     "debian-bookworm-6.1-x86_64", True, "exact", "file/6.1.0-50-cloud-amd64/w1d0"),
    ("6.1.0-50-cloud-arm64", "#1 SMP Debian 6.1.176-1 (2026-05-01)", "aarch64",
     "debian-bullseye-5.10-arm64", True, "exact", "file/6.1.0-50-cloud-arm64/w1d0"),
    ("5.15.0-91-generic", "#101-Ubuntu SMP", "x86_64", "kptr-restricted-6.12-x86_64", True,
     "core", "file/core-x86_64/w1d0"),
    ("5.10.0-32-cloud-amd64", "#1 SMP Debian 5.10.223-1", "x86_64", "centos7-3.10-x86_64", True,
     "exact", "file/5.10.0-32-cloud-amd64/w0d0"),
]


@pytest.mark.parametrize("release, version, arch, sample, btf, stage, unit", SELECTION_TABLE,
                         ids=[row[0] + "-" + row[3] for row in SELECTION_TABLE])
def test_selection_table(tmp_path: Path, release: str, version: str, arch: str, sample: str, btf: bool,
                         stage: str, unit: str) -> None:
    btf_file = tmp_path / "vmlinux"
    if btf:
        btf_file.write_bytes(b"btf")
    facts = gather(_uname(release, version, arch), kallsyms=KALLSYMS / sample, btf_path=btf_file)
    choice = select(_manifest(), facts, "file", read=False)
    assert (choice.stage, choice.entry.unit) == (stage, unit)
    assert choice.steps[-1].taken and not any(s.taken for s in choice.steps[:-1])


def _old_host(tmp_path: Path, btf: bool, sample: str = "ubuntu-xenial-4.4-x86_64"):
    btf_file = tmp_path / "vmlinux"
    if btf:
        btf_file.write_bytes(b"btf")
    return gather(_uname("4.4.0-210-generic", "#242-Ubuntu SMP", "x86_64"), kallsyms=KALLSYMS / sample,
                  btf_path=btf_file)


def test_pre_wrapper_kernel_gets_no_core_object(tmp_path: Path) -> None:
    # CO-RE objects are built with the wrapper only; a 4.4 kernel has none, and no BTF either.
    with pytest.raises(BtfUnavailable) as refused:
        select(_manifest(), _old_host(tmp_path, btf=False), "file", read=False)
    assert "syscall_wrapper True != host False" in str(refused.value)
    assert "runtime compilation is off" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_strict_refuses_anything_but_exact(tmp_path: Path) -> None:
    facts = gather(_uname("5.15.0-91-generic", "#101-Ubuntu SMP", "x86_64"),
                   kallsyms=KALLSYMS / "debian-bookworm-6.1-x86_64", btf_path=Path("/sys/kernel/btf/vmlinux"))
    with pytest.raises(NoMatch, match="--strict allows exact matches only"):
        select(_manifest(), facts, "file", strict=True, read=False)
    assert select(_manifest(), facts, "file", read=False).stage == "core"


def test_debug_flag_selects_the_debug_variant(tmp_path: Path) -> None:
    facts = gather(_uname("6.1.0-50-cloud-amd64", "#1 SMP Debian 6.1.176-1", "x86_64"),
                   kallsyms=KALLSYMS / "debian-bookworm-6.1-x86_64")
    chosen = select(_manifest(), facts, "file", debug=True, read=False)
    assert chosen.entry.unit == "file/6.1.0-50-cloud-amd64/w1d1"


def test_unknown_program_is_refused() -> None:
    with pytest.raises(NoMatch, match="'nope' is not in the manifest"):
        select(_manifest(), gather(), "nope")
