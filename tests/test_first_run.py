"""Issue #11's faults against the real pipeline (real docker, real Debian headers): cut or altered
cached inputs are repaired, failed units leave nothing cached, two builds share one cache, and an
interrupted or killed build leaves no container behind and is followed by a build that succeeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import ROOT, TEST_PROJECT, copy_project, fresh_cache, run_build

from hidsbuild.btf_header import cache_path
from hidsbuild.containers import LABEL
from hidsbuild.headers import HeadersCache
from hidsbuild.kernels import load_matrix

pytestmark = pytest.mark.integration

CORE_FROM = "7.2.13+deb14-cloud-amd64"


def _with_core(project: Path) -> Path:
    path = project / "kernels.yaml"
    path.write_text(path.read_text() + f"core:\n  x86_64: {{btf_from: {CORE_FROM}}}\n")
    return path


def _units(build: Path) -> dict[str, str]:
    return {u["unit"]: u["sha256"] for u in json.loads((build / "index.json").read_text())["units"]}


def _containers_of(pid: int) -> list:
    client = docker.from_env()
    return [c for c in client.containers.list(all=True, filters={"label": LABEL})
            if c.labels[LABEL].split(":")[1] == str(pid)]


def _start_build(matrix: Path, build: Path, cache: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-all", "--matrix", str(matrix),
         "--build-dir", str(build), "--cache-dir", str(cache), "--no-bundle"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _compiling(container: Any) -> bool:
    """A compile batch's container, not the toolchain probe a fresh cache runs first."""
    return container.status == "running" and "compile_unit.sh" in " ".join(container.attrs["Config"]["Cmd"] or [])


def _wait_for_container(proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(_compiling(c) for c in _containers_of(proc.pid)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no compile container started"
        time.sleep(0.2)


def test_cut_vmlinux_h_in_the_cache_is_rebuilt(tmp_path: Path) -> None:
    matrix = _with_core(copy_project(tmp_path / "p"))
    cache = fresh_cache(tmp_path)
    first = run_build(matrix, tmp_path / "b", cache, "--no-bundle")
    assert first.returncode == 0, first.stderr
    target = load_matrix(matrix).core[0]
    header = cache_path(cache, target, HeadersCache(cache / "headers", None).describe(target.btf_from).identity)
    whole = header.read_bytes()
    header.write_bytes(whole[:425_805])  # where the log stream once cut it
    for entry in (cache / "objects").glob("*/*"):  # the CO-RE units must compile against it again
        if json.loads((entry / "meta.json").read_text())["unit"].split("/")[1] == "core-x86_64":
            shutil.rmtree(entry)
    second = run_build(matrix, tmp_path / "b", cache, "--no-bundle")
    assert second.returncode == 0, second.stderr
    assert "discarded CO-RE vmlinux.h" in second.stderr
    assert header.read_bytes() == whole
    assert any(u.startswith("hello/core-x86_64/") for u in _units(tmp_path / "b"))


def test_cut_header_file_is_fetched_again(tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)
    first = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert first.returncode == 0, first.stderr
    (tree,) = [p for p in (cache / "headers").glob("linux-headers-6.1.0-50-common_*") if p.is_dir()]
    victim = tree / "usr/src/linux-headers-6.1.0-50-common/include/linux/sched.h"
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) // 3])
    again = fresh_cache(tmp_path / "again")  # empty object cache, the same (now damaged) headers
    second = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b2", again, "--no-bundle")
    assert second.returncode == 0, second.stderr
    assert "discarded headers linux-headers-6.1.0-50-common" in second.stderr
    assert victim.read_bytes() == whole
    assert _units(tmp_path / "b2") == _units(tmp_path / "b")


def test_failed_unit_leaves_nothing_cached_and_a_fixed_rerun_builds_only_it(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    matrix = project / "kernels.yaml"
    matrix.write_text(matrix.read_text().replace("programs:\n", "programs:\n  other: {source: bpf/other.bpf.c}\n", 1))
    good = (project / "bpf" / "hello.bpf.c").read_text().replace("count_exec", "other_exec")
    (project / "bpf" / "other.bpf.c").write_text(good.replace("*value += 1;", "*value += nope;"))
    cache = fresh_cache(tmp_path)
    first = run_build(matrix, tmp_path / "b", cache, "--no-bundle")
    assert first.returncode == 5
    assert len(list((cache / "objects").glob("*/*/unit.o"))) == 4  # hello's only (w1: w0 cannot run there)
    (project / "bpf" / "other.bpf.c").write_text(good)
    second = run_build(matrix, tmp_path / "b", cache, "--no-bundle")
    assert second.returncode == 0, second.stderr
    assert "4 cached, 8 skipped, 4 to build" in second.stderr
    assert "built 4, cached 4, skipped 8, failed 0" in second.stderr


def test_two_builds_sharing_one_cache_both_succeed(tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)
    procs = [_start_build(TEST_PROJECT / "kernels.yaml", tmp_path / f"b{i}", cache) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert _units(tmp_path / "b0") == _units(tmp_path / "b1") and len(_units(tmp_path / "b0")) == 4
    assert list((cache / "objects" / ".staging").iterdir()) == []


def _slow_project(dest: Path) -> Path:
    """The test project with the real probes added: 20 units, seconds of compile, so that a signal
    sent once a compile container runs lands mid-compile (hello alone compiles in under a second)."""
    project = copy_project(dest)
    shutil.copytree(ROOT / "bpf", project / "bpf", dirs_exist_ok=True)
    probes = "".join(f"  {p}: {{source: bpf/{p}.bpf.c}}\n" for p in ("file", "process", "network", "kernel"))
    matrix = project / "kernels.yaml"
    matrix.write_text(matrix.read_text().replace("programs:\n", "programs:\n" + probes, 1))
    return matrix


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_build_stops_its_containers_at_once(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    cache = fresh_cache(tmp_path)
    matrix = _slow_project(tmp_path / "p")
    proc = _start_build(matrix, tmp_path / "b", cache)
    _wait_for_container(proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err[-2000:]
    assert time.monotonic() - sent < 15, "a compile must not be waited for"
    assert "Traceback" not in err
    assert _containers_of(proc.pid) == []
    assert [p for p in (cache / "tmp").iterdir()] == []
    rerun = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert rerun.returncode == 0, rerun.stderr


def test_killed_build_leaves_nothing_a_rerun_trips_on(tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)
    proc = _start_build(_slow_project(tmp_path / "p"), tmp_path / "b", cache)
    _wait_for_container(proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    left = _containers_of(proc.pid)
    assert left, "a SIGKILLed run cannot remove its container: the next run must"
    scratch = list((cache / "tmp").iterdir())
    rerun = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert rerun.returncode == 0, rerun.stderr
    assert "left by build runs that died" in rerun.stderr
    assert _containers_of(proc.pid) == []
    assert not any(p.exists() for p in scratch)
    assert len(_units(tmp_path / "b")) == 4
