"""The loader as installed from the wheel (data found through importlib.resources), its runtime
compile path with the host's clang, and the project's own bpf/ programs once they exist."""

# ruff: noqa: E402
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT, clone_data, core_plan
from hids_bytecode import api, libbpf
from hids_bytecode.attach import open_and_load
from hids_bytecode.errors import IntegrityError
from hids_bytecode.hostinfo import gather
from hids_bytecode.manifest import load_manifest
from hids_bytecode.pins import PIN_ENV
from hids_bytecode.runtime_compile import CACHE_ENV, compile_plan

pytestmark = pytest.mark.integration


def test_installed_layout_finds_its_data_without_the_env_var(loader_data: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(ROOT / "loader" / "hids_bytecode", site / "hids_bytecode")
    shutil.rmtree(site / "hids_bytecode" / "data", ignore_errors=True)
    shutil.copytree(loader_data, site / "hids_bytecode" / "data")
    env = {k: v for k, v in os.environ.items() if k != "HIDS_BYTECODE_DATA"}
    proc = subprocess.run([sys.executable, "-m", "hids_bytecode", "audit"], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(site)}, cwd=tmp_path)
    assert proc.returncode == 0 and "4/4 objects ok" in proc.stdout, proc.stderr


def test_runtime_compile_builds_caches_and_loads(loader_data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # This host has no headers for its own kernel, so the plan uses the CO-RE flags against a
    # vmlinux.h: the compile, cache and load steps are the real ones.
    clang = shutil.which("clang") or shutil.which("clang-19")
    if clang is None:
        pytest.skip("no clang")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    facts = gather()
    entry = next(e for e in load_manifest(loader_data).entries if e.kind == "core")
    vmlinux_dir = next(loader_data.parent.glob("work"))
    plan = core_plan(Path(clang), vmlinux_dir)
    first = compile_plan(plan, entry, facts)
    assert first.parent == tmp_path / "cache" and not list(first.parent.glob(".tmp-*"))
    inode = first.stat().st_ino
    assert compile_plan(plan, entry, facts).stat().st_ino == inode  # cached, not rebuilt
    other = compile_plan(replace(plan, roots=replace(plan.roots, debug=True)), entry, facts)
    assert other != first  # the recipe's values are part of the key
    assert compile_plan(core_plan(Path(clang), vmlinux_dir, "-DHIDS_TEST_EXTRA=1"), entry, facts) not in (first, other)
    loaded = open_and_load(libbpf.get(), first.read_bytes(), "runtime")
    try:
        assert set(loaded.programs) == {"exec__kprobe", "exec__tracepoint", "open__tracepoint"}
    finally:
        loaded.close()


def test_runtime_compile_refuses_a_tampered_source(loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    entry = next(e for e in load_manifest(data).entries if e.kind == "core")
    assert entry.source_path is not None
    entry.source_path.write_text(entry.source_path.read_text() + "\n/* changed */\n")
    plan = core_plan(Path(shutil.which("true") or "/bin/true"), tmp_path)
    with pytest.raises(IntegrityError, match="source .* has sha256"):
        compile_plan(plan, entry, gather())


def test_project_bpf_programs_load_and_attach(bpf_data: tuple[Path, list[str]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, failed = bpf_data
    assert not failed, f"bpf/ programs that do not compile CO-RE here: {failed}"
    monkeypatch.setenv("HIDS_BYTECODE_DATA", str(data))
    monkeypatch.setenv(PIN_ENV, f"/sys/fs/bpf/hids-test-{os.getpid()}-bpf")
    for program in load_manifest(data).programs:
        result = api.load(program)
        try:
            assert any(r.status == "attached" for r in result.reports), json.dumps(result.as_dict())
        finally:
            api.unload(program)


def test_project_file_program_reports_an_open(bpf_data: tuple[Path, list[str]], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data, _ = bpf_data
    if "file" not in load_manifest(data).programs:
        pytest.skip("bpf/file.bpf.c not written yet")
    monkeypatch.setenv("HIDS_BYTECODE_DATA", str(data))
    marker = tmp_path / f"marker-{os.getpid()}"
    marker.write_text("x")
    stop = threading.Event()

    def child_opens() -> None:
        while not stop.wait(0.2):
            subprocess.run(["/bin/cat", str(marker)], capture_output=True)

    events = api.watch("file")
    opener = threading.Thread(target=child_opens, daemon=True)
    found = None
    try:
        opener.start()
        for count, event in enumerate(events):
            if event.get("event") == "open" and event.get("path") == str(marker):
                found = event
            if found or count > 200_000:
                break
    finally:
        stop.set()
        opener.join()
        events.close()
    assert found, "no open event of the marker from bpf/file.bpf.c"
    assert found["hdr"]["comm"] == "cat" and found["hdr"]["tgid"] != os.getpid()
