"""On this host, for real: load through libbpf, tracepoint attach, events read back (exec, open)
and decoded from the object's BTF, the agent's own events dropped in-kernel, unload leaves no pins."""

# ruff: noqa: E402
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT
from hids_bytecode import api, libbpf
from hids_bytecode.attach import load_object
from hids_bytecode.btf_layout import schema_from_object_file
from hids_bytecode.errors import LoadError
from hids_bytecode.events import read_counters
from hids_bytecode.manifest import load_manifest
from hids_bytecode.mounts import ensure_mounted
from hids_bytecode.pins import PIN_ENV

pytestmark = pytest.mark.integration

_KPROBES = Path("/sys/bus/event_source/devices/kprobe").exists()
_MAX_EVENTS = 200_000  # the whole host's opens and execs flow through; a bound, not a timing


@pytest.fixture()
def env(loader_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    pins = f"/sys/fs/bpf/hids-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HIDS_BYTECODE_DATA", str(loader_data))
    monkeypatch.setenv(PIN_ENV, pins)
    yield {**os.environ, "PYTHONPATH": str(ROOT / "loader")}
    assert not Path(pins).exists(), "a test left pins behind"


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hids_bytecode", *args], capture_output=True, text=True, env=env)


class Trigger:
    """Runs `cat <marker>` in a child (exec + open, another tgid) and opens a second marker from this
    process (the agent's tgid) until stopped."""

    def __init__(self, tmp: Path) -> None:
        self.child_marker = tmp / f"child-{uuid.uuid4().hex}"
        self.self_marker = tmp / f"self-{uuid.uuid4().hex}"
        self.child_marker.write_text("x")
        self.self_marker.write_text("x")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            subprocess.run(["/bin/cat", str(self.child_marker)], capture_output=True)
            self.self_marker.read_text()

    def __enter__(self) -> Trigger:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _collect(events: Iterator[dict], trigger: Trigger) -> tuple[dict, dict, bool]:
    exec_ev = open_ev = None
    saw_self = False
    for count, ev in enumerate(events):
        if ev.get("event") == "open" and ev["path"] == str(trigger.self_marker):
            saw_self = True
        if ev.get("event") == "exec" and ev["filename"] == "/bin/cat" and exec_ev is None:
            exec_ev = ev
        if ev.get("event") == "open" and ev["path"] == str(trigger.child_marker):
            open_ev = ev
        if (exec_ev and open_ev) or count > _MAX_EVENTS:
            break
    return exec_ev, open_ev, saw_self


@pytest.mark.parametrize("program", ["mini", "mini_perf"], ids=["ring buffer", "perf buffer"])
def test_in_process_watch_reads_back_exec_and_open(env: dict[str, str], tmp_path: Path, program: str) -> None:
    events = api.watch(program)
    with Trigger(tmp_path) as trigger:
        exec_ev, open_ev, saw_self = _collect(events, trigger)
        events.close()
    assert exec_ev and open_ev, "exec and open of the child never arrived"
    assert exec_ev["hdr"]["type"] == 1 and exec_ev["hdr"]["tgid"] != os.getpid()
    assert open_ev["hdr"]["comm"] == "cat" and open_ev["hdr"]["tgid"] == exec_ev["hdr"]["tgid"]
    assert not saw_self, "the agent's own open was not dropped: config.agent_tgid was not written"


def test_load_pin_watch_unload(env: dict[str, str], tmp_path: Path) -> None:
    pins = Path(env[PIN_ENV]) / "mini"
    loaded = cli(env, "load", "mini", "--json")
    try:
        assert loaded.returncode == 0, loaded.stderr
        report = {p["program"]: p for p in json.loads(loaded.stdout)[0]["programs"]}
        if _KPROBES:
            assert report["exec__kprobe"]["status"] == "attached"
            assert report["exec__tracepoint"]["status"] == "skipped"
        else:
            assert report["exec__kprobe"]["status"] == "not supported by this kernel"
            assert report["exec__kprobe"]["message"].startswith("libbpf: prog 'exec__kprobe'")
            assert report["exec__tracepoint"]["status"] == "attached"
        assert report["open__tracepoint"]["status"] == "attached"
        assert {p.name for p in (pins / "maps").iterdir()} == {"events", "counters", "config"}
        attached = {name for name, r in report.items() if r["status"] == "attached"}
        assert {p.name for p in (pins / "links").iterdir()} == attached
        assert cli(env, "load", "mini").returncode == 26  # AlreadyLoaded

        with Trigger(tmp_path) as trigger:
            watcher = subprocess.Popen([sys.executable, "-m", "hids_bytecode", "watch", "mini"], env=env,
                                       stdout=subprocess.PIPE, text=True)
            lines = (json.loads(line) for line in watcher.stdout)
            exec_ev, open_ev, _ = _collect(lines, trigger)
            watcher.terminate()
            watcher.wait()
        assert exec_ev and open_ev, "the pinned events map delivered no exec/open of the child"
    finally:
        unloaded = cli(env, "unload", "mini")
    assert unloaded.returncode == 0, unloaded.stderr
    assert not pins.exists()


def test_bpftool_backend_loads_and_pins(env: dict[str, str]) -> None:
    pins = Path(env[PIN_ENV]) / "mini"
    loaded = cli(env, "load", "mini", "--backend", "bpftool")
    try:
        assert loaded.returncode == 0, loaded.stderr
        assert {"exec__kprobe", "exec__tracepoint", "open__tracepoint"} <= {p.name for p in (pins / "progs").iterdir()}
        assert {"events", "counters", "config"} <= {p.name for p in (pins / "maps").iterdir()}
    finally:
        assert cli(env, "unload", "mini").returncode == 0
    assert not pins.exists()


@pytest.mark.parametrize("fstype", ["bpf", "tracefs"])
def test_missing_filesystems_are_mounted(tmp_path: Path, fstype: str) -> None:
    target = tmp_path / fstype
    assert ensure_mounted(target, fstype) is True
    try:
        assert ensure_mounted(target, fstype) is False  # already there: left alone
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        assert any(line.split()[1:3] == [str(target), fstype] for line in mounts)
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_counters_count_what_was_emitted(env: dict[str, str], tmp_path: Path) -> None:
    assert cli(env, "load", "mini").returncode == 0
    try:
        subprocess.run(["/bin/cat", "/dev/null"], check=True)
        lib = libbpf.get()
        entry = next(e for e in load_manifest().entries if e.program == "mini")
        fd = lib.bpf_obj_get(str(Path(env[PIN_ENV]) / "mini" / "maps" / "counters").encode())
        assert fd >= 0
        try:
            counts = read_counters(lib, fd, schema_from_object_file(lib, entry.object_path))
        finally:
            os.close(fd)
        assert counts["exec"]["emitted"] >= 1 and counts["open"]["emitted"] >= 1
        assert set(counts["exec"]) == {"emitted", "dropped"}
    finally:
        assert cli(env, "unload", "mini").returncode == 0


def test_verifier_rejection_carries_the_whole_log(env: dict[str, str]) -> None:
    """One load gives both the one-line reason and libbpf's whole output (the verifier's log)."""
    with pytest.raises(LoadError) as caught:
        api.load("rejected")
    assert "rejected by the verifier: invalid access to map value" in str(caught.value)
    assert "\n" not in str(caught.value)
    log = caught.value.log
    assert re.search(r"^\d+: \(", log, re.M), "no instruction line: not the verifier's own log"
    assert "invalid access to map value" in log and "processed" in log


def _bpftool_shows(kind: str, ident: int) -> bool:
    return subprocess.run(["bpftool", kind, "show", "id", str(ident)], capture_output=True).returncode == 0


def test_loaded_object_is_freed_when_its_block_ends(env: dict[str, str]) -> None:
    """load_object -> attached and owned here; leaving the `with` detaches and frees it (nothing pinned)."""
    choice = api.choose("mini")
    data, _ = api.object_for(choice, api.host_facts())
    with load_object(libbpf.get(), data, "mini", agent_tgid=os.getpid()) as loaded:
        assert loaded.links, "nothing attached"
        fdinfo = Path(f"/proc/self/fdinfo/{loaded.map_fd('events')}").read_text()
        map_id = int(re.search(r"^map_id:\s+(\d+)", fdinfo, re.M).group(1))
        assert _bpftool_shows("map", map_id)
    deadline = time.monotonic() + 5
    while _bpftool_shows("map", map_id) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel frees a map after an RCU grace period
    assert not _bpftool_shows("map", map_id), "the object outlived its block"
