"""Fast tier (no docker, no root, no network): the object cache and checked artifacts under
tampering, crashes and concurrent writers. The object is the loader tests' mini probe, compiled
with the host's clang."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from conftest_loader import MINI_SOURCE, compile_core
from hids_bytecode.procstat import start_ticks

from hidsbuild.artifacts import read_checked, record_tree, tree_intact, write_checked
from hidsbuild.btf_header import problem
from hidsbuild.cache import ObjectCache
from hidsbuild.owners import make_scratch, owner_alive, reap_scratch
from hidsbuild.validate import validate_object

KEY = "ab" * 32


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return compile_core(MINI_SOURCE, tmp_path_factory.mktemp("obj"))


def _meta(data: bytes) -> dict:
    info = validate_object(data)
    return {"unit": "mini/x/w1d0", "programs": list(info.programs), "maps": list(info.maps), "license": info.license,
            "clang": "test", "toolchain": "test", "compile_ns": 1, "warnings": ""}


def test_hit_returns_the_object_put(tmp_path: Path, obj: bytes) -> None:
    cache = ObjectCache(tmp_path)
    cache.put(KEY, obj, _meta(obj))
    hit = cache.get(KEY)
    assert hit is not None and hit.data == obj


def test_consistent_tamper_of_object_and_meta_is_refused(tmp_path: Path, obj: bytes, capsys) -> None:
    cache = ObjectCache(tmp_path)
    cache.put(KEY, obj, _meta(obj))
    entry = tmp_path / KEY[:2] / KEY
    forged = obj[: len(obj) // 2]
    meta = json.loads((entry / "meta.json").read_text())
    meta.update(sha256=hashlib.sha256(forged).hexdigest(), size=len(forged))
    (entry / "unit.o").write_bytes(forged)
    (entry / "meta.json").write_text(json.dumps(meta))
    assert cache.get(KEY) is None
    assert not entry.exists(), "a refused entry is discarded so the next build rebuilds it"
    assert "discarded" in capsys.readouterr().err


@pytest.mark.parametrize("meta", [[], {"sha256": 5}, "x", None])
def test_malformed_meta_is_a_miss_not_a_crash(tmp_path: Path, obj: bytes, meta: object) -> None:
    cache = ObjectCache(tmp_path)
    cache.put(KEY, obj, _meta(obj))
    (tmp_path / KEY[:2] / KEY / "meta.json").write_text(json.dumps(meta))
    assert cache.get(KEY) is None


def test_truncated_object_is_a_miss(tmp_path: Path, obj: bytes) -> None:
    cache = ObjectCache(tmp_path)
    cache.put(KEY, obj, _meta(obj))
    with open(tmp_path / KEY[:2] / KEY / "unit.o", "r+b") as fh:
        fh.truncate(100)
    assert cache.get(KEY) is None


def _put_many(root: str, data: bytes, meta: dict, barrier: multiprocessing.synchronize.Barrier) -> None:
    barrier.wait()
    cache = ObjectCache(Path(root))
    for _ in range(20):
        cache.put(KEY, data, meta)
        assert cache.get(KEY) is not None


def test_concurrent_puts_of_one_key_all_succeed(tmp_path: Path, obj: bytes) -> None:
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_put_many, args=(str(tmp_path), obj, _meta(obj), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert ObjectCache(tmp_path).get(KEY).data == obj
    assert list((tmp_path / ".staging").iterdir()) == []


def test_staging_of_a_killed_process_is_reaped_and_a_live_ones_kept(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]);"
                              "from pathlib import Path; from hidsbuild.owners import make_scratch;"
                              "print(make_scratch(Path(sys.argv[2]), 'put'), flush=True); import time; time.sleep(60)",
                              str(ROOT), str(tmp_path / ".staging")], stdout=subprocess.PIPE, text=True)
    theirs = Path(child.stdout.readline().strip())
    mine = make_scratch(tmp_path / ".staging", "put")
    assert reap_scratch(tmp_path / ".staging") == 0
    child.kill()
    child.wait()
    ObjectCache(tmp_path)  # opening the cache is what cleans up
    assert not theirs.exists() and mine.exists()


def test_owner_of_a_reused_pid_is_dead() -> None:
    pid, start = os.getpid(), Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]
    host = socket.gethostname()
    assert owner_alive(f"{host}:{pid}:{start}") is True
    assert owner_alive(f"{host}:{pid}:{int(start) + 1}") is False, "same pid, another process"
    assert owner_alive(f"other-host:{pid}:1") is True, "another host's runs are never reaped"


def test_start_time_of_a_process_named_with_parentheses_and_spaces(tmp_path: Path) -> None:
    # A process's name is chosen by whoever starts it: "x) R 1 2 (" would shift every field of a
    # naive split of /proc/<pid>/stat.
    tricky = tmp_path / "x) R 1 2 3 4 ("
    tricky.symlink_to(shutil.which("sleep") or "/bin/sleep")
    plain = subprocess.Popen(["sleep", "30"])
    named = subprocess.Popen([str(tricky), "30"])
    try:
        # The kernel closes the exec error pipe Popen waits on before it renames the process.
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{named.pid}/comm").read_text().startswith("x) R 1 2"):
            assert time.monotonic() < deadline, "the tricky name never showed in comm"
            time.sleep(0.01)
        ours, theirs = start_ticks(plain.pid), start_ticks(named.pid)
        assert ours is not None and theirs is not None
        assert 0 <= theirs - ours < 200, "both started within two seconds of each other"
    finally:
        plain.kill(), named.kill(), plain.wait(), named.wait()
    assert start_ticks(named.pid) is None, "a reaped process has no start time"


def test_checked_file_cut_after_write_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "a" / "vmlinux.h"
    write_checked(path, b"x" * 1000)
    assert read_checked(path, "test") == b"x" * 1000
    with open(path, "r+b") as fh:
        fh.truncate(10)
    assert read_checked(path, "test") is None
    assert not path.exists() and not path.with_name("vmlinux.h.sha256").exists()


def test_tree_record_catches_a_cut_header_and_a_new_symlink(tmp_path: Path) -> None:
    tree = tmp_path / "staging"
    (tree / "usr/src/linux-headers-x/include").mkdir(parents=True)
    (tree / "usr/src/linux-headers-x/include/a.h").write_text("#define A 1\n")
    os.symlink("include", tree / "usr/src/linux-headers-x/inc")
    final = tmp_path / "entry"
    record_tree(tree, final)
    tree.rename(final)
    assert tree_intact(final, "test")
    (final / "usr/src/linux-headers-x/include/a.h").write_text("#defi")
    assert not tree_intact(final, "test") and not final.exists()


def test_cut_vmlinux_h_is_named() -> None:
    body = b"#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n" + b"#ifndef X\nstruct a { int b; };\n#endif\n" * 20000
    whole = body + b"#endif /* __VMLINUX_H__ */\n"
    assert problem(whole) is None
    assert "cut" in problem(whole[:425_805])
    assert "fewer" in problem(whole[:1000])
