"""build-all against real Debian headers in the real toolchain container."""

from __future__ import annotations

import json
import time
from pathlib import Path

import docker
import pytest
from conftest import TEST_PROJECT, copy_project, fresh_cache, run_build
from elftools.elf.elffile import ELFFile

from hidsbuild.validate import validate_object

pytestmark = pytest.mark.integration


def index(build: Path) -> dict:
    return json.loads((build / "index.json").read_text())


def containers_created(since: float) -> int:
    client = docker.from_env()
    events = client.events(since=int(since), until=int(time.time()) + 1, decode=True,
                           filters={"type": "container", "event": "create"})
    return sum(1 for _ in events)


def add_program(project: Path, name: str, source: str) -> None:
    text = (project / "kernels.yaml").read_text()
    (project / "kernels.yaml").write_text(
        text.replace("programs:\n", f"programs:\n  {name}: {{source: bpf/{name}.bpf.c}}\n", 1))
    (project / "bpf" / f"{name}.bpf.c").write_text(source)


def test_two_kernel_build_objects_pass_validation(built_project: Path) -> None:
    units = index(built_project)["units"]
    assert len(units) == 4  # w1 only: both kernels have the syscall wrapper (tests/test_variants.py)
    assert {u["kernel"]["release"] for u in units} == {"6.1.0-50-cloud-amd64", "7.2.13+deb14-cloud-amd64"}
    for unit in units:
        data = (built_project / unit["object"]).read_bytes()
        info = validate_object(data)
        assert [p["section"] for p in info.programs] == ["raw_tracepoint/sched_process_exec"]
        assert info.maps == ("execs",)
        assert unit["toolchain"]["clang"].startswith("Debian clang version 19")
        with open(built_project / unit["object"], "rb") as fh:
            names = {s.name for s in ELFFile(fh).iter_sections()}
        assert {".BTF", ".BTF.ext"} <= names and not any(n.startswith(".debug") for n in names)
        assert ("-fms-extensions" in unit["cflags"]) == unit["kernel"]["release"].startswith("7.")
    assert (built_project / units[0]["source"]["path"]).read_text().count('#line 1 "bpf/include/mini.h"') == 1


def test_rebuild_with_nothing_changed_is_all_cache_hits_and_starts_no_container(tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)
    first = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert first.returncode == 0, first.stderr
    before = index(tmp_path / "b")
    # docker filters events by whole seconds: start on a fresh one so the first build's are not counted.
    time.sleep(1.01 - time.time() % 1)
    start = time.time()
    second = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert second.returncode == 0, second.stderr
    assert "4 cached, 4 skipped, 0 to build" in second.stderr
    assert "toolchain image" not in second.stderr
    assert containers_created(start) == 0
    assert index(tmp_path / "b") == before


def test_touched_source_rebuilds_only_its_units(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    add_program(project, "other", (project / "bpf" / "hello.bpf.c").read_text().replace("count_exec", "other_exec"))
    cache = fresh_cache(tmp_path)
    assert run_build(project / "kernels.yaml", tmp_path / "b", cache, "--no-bundle").returncode == 0
    before = {u["unit"]: u["sha256"] for u in index(tmp_path / "b")["units"]}
    source = project / "bpf" / "other.bpf.c"
    source.write_text(source.read_text().replace("*value += 1;", "*value += 2;"))
    proc = run_build(project / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert proc.returncode == 0, proc.stderr
    assert "4 cached, 8 skipped, 4 to build" in proc.stderr
    after = {u["unit"]: u["sha256"] for u in index(tmp_path / "b")["units"]}
    changed = {u for u in after if after[u] != before[u]}
    assert changed and all(u.startswith("other/") for u in changed)
    assert all(after[u] == before[u] for u in after if u.startswith("hello/"))


def test_broken_program_fails_with_compiler_message_while_others_build(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    add_program(project, "broken", (project / "bpf" / "broken.bpf.c").read_text())
    proc = run_build(project / "kernels.yaml", tmp_path / "b", fresh_cache(tmp_path), "--no-bundle")
    assert proc.returncode == 5
    assert "use of undeclared identifier 'undeclared_identifier'" in proc.stderr
    assert "bpf/broken.bpf.c:9" in proc.stderr  # #line markers point at the original file
    built = index(tmp_path / "b")
    assert len(built["units"]) == 4 and all(u["program"] == "hello" for u in built["units"])
    assert sorted(f["unit"] for f in built["failures"]) == sorted(
        f"broken/{k}/{v}" for k in ("6.1.0-50-cloud-amd64", "7.2.13+deb14-cloud-amd64")
        for v in ("w1d0", "w1d1"))


def test_builds_in_different_directories_give_identical_objects(tmp_path: Path, built_project: Path) -> None:
    project = copy_project(tmp_path / "elsewhere" / "deeper" / "checkout")
    proc = run_build(project / "kernels.yaml", tmp_path / "b", fresh_cache(tmp_path), "--no-bundle")
    assert proc.returncode == 0, proc.stderr
    ours = {u["unit"]: u["sha256"] for u in index(tmp_path / "b")["units"]}
    theirs = {u["unit"]: u["sha256"] for u in index(built_project)["units"]}
    assert ours == theirs


def test_corrupt_cache_entry_is_not_trusted(tmp_path: Path) -> None:
    cache = fresh_cache(tmp_path)
    assert run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle").returncode == 0
    entry = next((cache / "objects").glob("*/*/unit.o"))
    entry.write_bytes(entry.read_bytes()[:100])  # as if a build died mid-write without the rename
    proc = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert proc.returncode == 0, proc.stderr
    assert "3 cached, 4 skipped, 1 to build" in proc.stderr
    for unit in index(tmp_path / "b")["units"]:
        validate_object((tmp_path / "b" / unit["object"]).read_bytes())


@pytest.mark.parametrize("shard", ["0/2", "3/2", "x"])
def test_bad_shard_is_refused(tmp_path: Path, shard: str) -> None:
    proc = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", fresh_cache(tmp_path), "--shard", shard)
    assert proc.returncode == 2 and "--shard" in proc.stderr
    assert not (tmp_path / "b").exists()
