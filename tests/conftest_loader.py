"""The loader tests' data directory: manifest.json + objects/ + sources/, as the wheel ships it.

Until the pipeline's wheel is wired in, the objects are compiled here, at fixture time, with the
host's clang as CO-RE objects against this kernel's BTF (never a committed binary). The one place
to switch to the real wheel is `make_loader_data`: point it at an unpacked wheel's
hids_bytecode/data and the tests run unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hids_bytecode.recipe import Roots, parse_recipe
from hids_bytecode.runtime_compile import RuntimePlan

ROOT = Path(__file__).resolve().parent.parent
LOADER_DATA = ROOT / "tests" / "data" / "loader"
MINI_SOURCE = LOADER_DATA / "mini_hids.bpf.c"
PROGRAM = "mini"


def _llvm_tool(name: str) -> str:
    """`name` from the LLVM of the newest clang-N (plain `llc` may be an older LLVM than clang)."""
    clangs = sorted((int(p.name[6:]), p) for d in os.environ["PATH"].split(os.pathsep)
                    for p in Path(d or ".").glob("clang-[0-9]*") if p.name[6:].isdigit())
    if not clangs:
        pytest.skip("no clang-N installed")
    tool = clangs[-1][1].resolve().parent / name
    if not tool.exists():
        pytest.skip(f"{tool} missing")
    return str(tool)


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} not installed")
    return found


def _host_wrapper() -> bool:
    with open("/proc/kallsyms") as lines:
        for line in lines:
            if line.rstrip().endswith(("_sys_openat", "_sys_execve")):
                return "__" in line.split()[2][:2]
    return False


def compile_core(source: Path, workdir: Path, *defines: str) -> bytes:
    """A CO-RE object of `source` with the pipeline's CO-RE flags (docs/DESIGN.md)."""
    workdir.mkdir(parents=True, exist_ok=True)
    vmlinux = workdir / "vmlinux.h"
    if not vmlinux.exists():
        dump = subprocess.run([_tool("bpftool"), "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"],
                              check=True, capture_output=True)
        vmlinux.write_bytes(dump.stdout)
    obj = workdir / f"{source.name.split('.')[0]}-{hashlib.sha256(repr(defines).encode()).hexdigest()[:12]}.o"
    arch = "arm64" if os.uname().machine == "aarch64" else "x86"
    bitcode = obj.with_suffix(".bc")
    # The pipeline's steps: clang to LLVM IR, llc for BPF v2, then DWARF stripped (.BTF kept).
    subprocess.run([_llvm_tool("clang"), "-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-DHIDS_CORE=1",
                    f"-I{workdir}", *defines, "-DUSE_SYSCALL_WRAPPER=1", "-DDEBUG=0", "-O2", "-g",
                    "-emit-llvm", "-c", str(source), "-o", str(bitcode)], check=True, capture_output=True)
    subprocess.run([_llvm_tool("llc"), "-march=bpf", "-mcpu=v2", "-filetype=obj", str(bitcode), "-o", str(obj)],
                   check=True, capture_output=True)
    subprocess.run([_llvm_tool("llvm-strip"), "-g", str(obj)], check=True, capture_output=True)
    return obj.read_bytes()


def _declared(data: bytes) -> dict[str, Any]:
    """The entry's programs and maps, as the pipeline records them from the object."""
    from hids_bytecode.elfinfo import inventory
    found = inventory(data)
    return {"programs": [{"name": n, "section": s, "type": s.split("/")[0]} for n, s in sorted(found.programs)],
            "maps": sorted(found.maps)}


def _entry(program: str, kind: str, data: bytes, source_text: bytes, wrapper: bool) -> dict[str, Any]:
    u = os.uname()
    sha = hashlib.sha256(data).hexdigest()
    source_sha = hashlib.sha256(source_text).hexdigest()
    release = u.release if kind == "exact" else None
    kernel: dict[str, Any] = {"release": release, "arch": u.machine}
    if kind == "core":
        kernel["btf_from"] = u.release
    target = release or f"core-{u.machine}"
    return {
        "unit": f"{program}/{target}/w{int(wrapper)}d0", "program": program, "kind": kind, "kernel": kernel,
        "variant": {"syscall_wrapper": wrapper, "debug": False},
        "object": f"objects/{sha}.o", "sha256": sha, "size": len(data),
        **_declared(data),
        "toolchain": {"clang": "host", "image": "none"},
        "source": {"path": f"sources/{program}-{source_sha[:16]}.c", "sha256": source_sha},
        "cflags": [],
    }


def make_loader_data(dest: Path) -> Path:
    """A data dir for the mini program (an exact entry for this kernel and a CO-RE entry) and for
    `rejected`, the same source built to fail the verifier, and `mini_perf`, built with a perf buffer."""
    data = compile_core(MINI_SOURCE, dest / "work")
    rejected = compile_core(MINI_SOURCE, dest / "work", "-DHIDS_TEST_UNCHECKED_LOOKUP")
    perf = compile_core(MINI_SOURCE, dest / "work", "-DHIDS_TEST_PERF")
    source_text = MINI_SOURCE.read_bytes()
    wrapper = _host_wrapper()
    entries = [_entry(PROGRAM, "exact", data, source_text, wrapper),
               _entry(PROGRAM, "core", data, source_text, wrapper),
               _entry("rejected", "exact", rejected, source_text, wrapper),
               _entry("mini_perf", "exact", perf, source_text, wrapper)]
    objects = {data: entries[:2], rejected: entries[2:3], perf: entries[3:]}
    root = dest / "data"
    for blob, group in objects.items():
        for e in group:
            (root / e["object"]).parent.mkdir(parents=True, exist_ok=True)
            (root / e["object"]).write_bytes(blob)
            (root / e["source"]["path"]).parent.mkdir(parents=True, exist_ok=True)
            (root / e["source"]["path"]).write_bytes(source_text)
    write_manifest(root, entries)
    return root


def write_manifest(root: Path, entries: list[dict[str, Any]]) -> None:
    manifest = {"schema": 1, "version": "0.0.test", "source_hash": "test" + "0" * 60,
                "arch": os.uname().machine, "objects": entries}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


def clone_data(src: Path, dest: Path) -> Path:
    """A private copy a test may tamper with."""
    shutil.copytree(src, dest)
    return dest


def make_bpf_data(dest: Path) -> tuple[Path, list[str]]:
    """A data dir of the project's own bpf/*.bpf.c, compiled CO-RE for this host (exact entries
    for this kernel), and the programs whose compile failed."""
    root = dest / "data"
    entries, failed = [], []
    wrapper = _host_wrapper()
    for source in sorted((ROOT / "bpf").glob("*.bpf.c")):
        program = source.name.split(".")[0]
        try:
            data = compile_core(source, dest / "work", f"-I{ROOT / 'bpf' / 'include'}")
        except subprocess.CalledProcessError:
            failed.append(program)
            continue
        entry = _entry(program, "exact", data, source.read_bytes(), wrapper)
        (root / entry["object"]).parent.mkdir(parents=True, exist_ok=True)
        (root / entry["object"]).write_bytes(data)
        entries.append(entry)
    root.mkdir(parents=True, exist_ok=True)
    write_manifest(root, entries)
    return root, failed


@pytest.fixture(scope="session")
def bpf_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    if not list((ROOT / "bpf").glob("*.bpf.c")):
        pytest.skip("bpf/ holds no programs yet")
    return make_bpf_data(tmp_path_factory.mktemp("bpf-data"))


@pytest.fixture(scope="session")
def loader_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_loader_data(tmp_path_factory.mktemp("loader-data"))


def core_plan(clang: Path, vmlinux_dir: Path, *defines: str) -> RuntimePlan:
    """A runtime plan compiling the mini source by a CO-RE recipe (the pipeline's CO-RE flags)
    against `vmlinux_dir`'s vmlinux.h: this host ships no kernel headers for an exact one."""
    arch = "arm64" if os.uname().machine == "aarch64" else "x86"
    recipe = parse_recipe([
        {"tool": "clang", "args": ["-target", "bpf", f"-D__TARGET_ARCH_{arch}", "-DHIDS_CORE=1", "-I{btf}", *defines,
                                   "-DUSE_SYSCALL_WRAPPER={wrapper}", "-DDEBUG={debug}", "-O2", "-g",
                                   "-fdebug-prefix-map={source_dir}=.", "-fdebug-compilation-dir=.", "{source}",
                                   "-emit-llvm", "-c", "-o", "{bitcode}"]},
        {"tool": "llc", "args": ["-march=bpf", "-mcpu=v2", "-filetype=obj", "-o", "{object}", "{bitcode}"]},
        {"tool": "llvm-strip", "args": ["-g", "{object}"]}])
    return RuntimePlan(True, "test", clang, recipe, Roots(btf=str(vmlinux_dir), wrapper=True, debug=False))
