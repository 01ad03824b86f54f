"""The loader on a hostile host (issue 12): each attack, tried for real on this kernel, by a real
unprivileged user (uid 65534 via setpriv) where the attack is theirs.

Each test gets its own bpffs mounted mode 1777 (the kernel's default, and what the issue found)
under a root-owned 0755 directory: the attacker can reach it as on a careless host, and the
test's pins never meet another test's.
"""

# ruff: noqa: E402

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT
from hids_bytecode import api, libbpf
from hids_bytecode.errors import EXIT_CODES, InvalidArgument
from hids_bytecode.mounts import ensure_mounted
from hids_bytecode.pins import PIN_ENV

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="loads eBPF and mounts bpffs: needs root")]
NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
MAPS = {"events", "counters", "config"}


class Host:
    """A private 1777 bpffs at `bpf`, the pin tree at `bpf/hids`, and the loader's environment."""

    def __init__(self, base: Path, data: Path) -> None:
        self.base, self.bpf, self.tree = base, base / "bpf", base / "bpf" / "hids"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(data),
                    PIN_ENV: str(self.tree)}

    def cli(self, *args: str, **kw: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hids_bytecode", *args], capture_output=True, text=True,
                              env=self.env, check=False, **kw)

    def popen(self, *args: str, **kw: object) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "hids_bytecode", *args], env=self.env, text=True, **kw)

    def state(self, program: str = "mini") -> str:
        """absent | complete | partial, and nothing else may be in the tree."""
        pins = self.tree / program
        if not pins.exists():
            return "absent"
        maps = {p.name for p in (pins / "maps").iterdir()} if (pins / "maps").is_dir() else set()
        progs = {p.name for p in (pins / "progs").iterdir()} if (pins / "progs").is_dir() else set()
        links = {p.name for p in (pins / "links").iterdir()} if (pins / "links").is_dir() else set()
        whole = maps == MAPS and progs >= {"exec__tracepoint", "open__tracepoint"} and "open__tracepoint" in links
        return "complete" if whole else f"partial: maps {sorted(maps)} progs {sorted(progs)} links {sorted(links)}"

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.tree.iterdir() if p.name != "mini") if self.tree.exists() else []


@pytest.fixture()
def host(loader_data: Path) -> Host:
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv")
    base = Path(tempfile.mkdtemp(prefix="hids-hostile-"))
    base.chmod(0o755)
    (base / "bpf").mkdir()
    subprocess.run(["mount", "-t", "bpf", "-o", "mode=1777", "bpf", str(base / "bpf")], check=True)
    try:
        yield Host(base, loader_data)
    finally:
        subprocess.run(["umount", str(base / "bpf")], check=True)  # frees whatever a test left pinned
        shutil.rmtree(base)


def as_nobody(script: str) -> None:
    subprocess.run([*NOBODY, "sh", "-ec", script], check=True)


def agent_tgid(tree: Path) -> int:
    lib = libbpf.get()
    fd = lib.bpf_obj_get(str(tree / "mini" / "maps" / "config").encode())
    assert fd >= 0, "config is not pinned"
    try:
        value, key = ctypes.create_string_buffer(4096), ctypes.c_uint32(0)
        assert lib.bpf_map_lookup_elem(fd, ctypes.byref(key), value) == 0
        return ctypes.c_uint32.from_buffer(value).value
    finally:
        os.close(fd)


def holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return False


def wait_for(predicate, timeout: float = 15.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def test_unload_never_takes_a_path(host: Host, tmp_path: Path) -> None:
    victim = host.base / "x" / "victim"
    victim.mkdir(parents=True)
    (victim / "precious").write_text("keep")
    assert host.cli("load", "mini").returncode == 0
    rel = os.path.relpath(victim, host.tree)
    proc = host.cli("unload", rel)
    assert proc.returncode == EXIT_CODES["InvalidArgument"], proc.stderr
    assert "invalid program name" in proc.stderr and "Traceback" not in proc.stderr
    assert (victim / "precious").read_text() == "keep"
    os.environ[PIN_ENV] = str(host.tree)
    try:
        with pytest.raises(InvalidArgument, match="invalid program name"):
            api.unload(os.path.relpath(host.base / "x", host.tree))
    finally:
        del os.environ[PIN_ENV]
    assert (victim / "precious").read_text() == "keep"
    assert host.state() == "complete"
    assert host.cli("unload", "mini").returncode == 0


def test_tree_planted_by_another_user_is_refused(host: Host) -> None:
    secret = host.base / "secret"
    secret.mkdir(mode=0o700)
    (secret / "keep").write_text("root's")
    # In the 1777 bpffs the attacker makes the pin tree before root does, with a symlink inside.
    as_nobody(f"mkdir {host.tree} && ln -s {secret} {host.tree}/file && ln -s {secret} {host.tree}/mini")
    for args in (("unload", "file"), ("unload", "mini"), ("load", "mini"), ("watch", "mini", "--count", "1")):
        proc = host.cli(*args, timeout=60)
        assert proc.returncode == EXIT_CODES["PinTreeError"], (args, proc.stderr)
        assert "owned by uid 65534" in proc.stderr and "Traceback" not in proc.stderr
    assert (secret / "keep").read_text() == "root's"
    assert sorted(p.name for p in host.tree.iterdir()) == ["file", "mini"]  # nothing of root's went in there


def test_symlinked_tree_and_writable_parent_are_refused(host: Host) -> None:
    as_nobody(f"ln -s /etc {host.tree}")
    proc = host.cli("unload", "mini")
    assert proc.returncode == EXIT_CODES["PinTreeError"] and "symlink" in proc.stderr, proc.stderr
    subprocess.run(["rm", str(host.tree)], check=True)
    host.base.chmod(0o777)  # another user could rename bpf/ away and put their own in its place
    try:
        proc = host.cli("load", "mini")
        assert proc.returncode == EXIT_CODES["PinTreeError"] and "writable by others" in proc.stderr, proc.stderr
    finally:
        host.base.chmod(0o755)
    assert not host.tree.exists()


def test_tree_is_root_0700_and_closed_to_others(host: Host) -> None:
    assert host.cli("load", "mini").returncode == 0
    st = host.tree.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o700)
    denied = subprocess.run([*NOBODY, "ln", "-s", "/etc", str(host.tree / "evil")], capture_output=True, text=True,
                            check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    assert host.cli("unload", "mini").returncode == 0
    assert not host.tree.exists()


def test_loader_mounts_bpffs_0700(tmp_path: Path) -> None:
    target = tmp_path / "bpf"
    assert ensure_mounted(target, "bpf") is True
    try:
        assert target.stat().st_mode & 0o777 == 0o700
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_filter_holds_the_consumer_never_load(host: Host) -> None:
    loaded = host.cli("load", "mini", "--json")
    assert loaded.returncode == 0, loaded.stderr
    assert json.loads(loaded.stdout)[0]["agent_pid"] == 0
    assert agent_tgid(host.tree) == 0, "load left its own (dying) pid in the filter"
    watcher = host.popen("watch", "mini", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: agent_tgid(host.tree) == watcher.pid), "watch did not put its own pid in the filter"
    finally:
        watcher.send_signal(signal.SIGTERM)
        _, err = watcher.communicate(timeout=30)
    assert watcher.returncode == 143 and "Traceback" not in err, err
    assert agent_tgid(host.tree) == 0, "the filter still names a watch that is gone"
    assert host.cli("unload", "mini").returncode == 0

    agent = subprocess.Popen(["sleep", "60"])
    try:
        loaded = host.cli("load", "mini", "--agent-pid", str(agent.pid))
        assert loaded.returncode == 0, loaded.stderr
        assert agent_tgid(host.tree) == agent.pid
    finally:
        agent.kill()
        agent.wait()
    assert host.cli("unload", "mini").returncode == 0
    gone = host.cli("load", "mini", "--agent-pid", str(agent.pid))
    assert gone.returncode == 2 and "does not exist" in gone.stderr
    assert not host.tree.exists()


def test_second_watch_is_refused_naming_the_first(host: Host) -> None:
    assert host.cli("load", "mini").returncode == 0
    first = host.popen("watch", "mini", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: agent_tgid(host.tree) == first.pid)
        second = host.cli("watch", "mini", timeout=30)
        assert second.returncode == EXIT_CODES["Busy"], second.stderr
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert agent_tgid(host.tree) == first.pid, "the refused watch touched the filter"
    finally:
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
    assert first.returncode == 130 and "Traceback" not in err, err
    assert host.cli("unload", "mini").returncode == 0


def test_sigterm_ends_a_watch_whose_reader_stopped_reading(host: Host, tmp_path: Path) -> None:
    # An agent that hangs leaves watch blocked on a full pipe; stopping watch must still work,
    # and what reached the pipe must be whole lines.
    assert host.cli("load", "mini").returncode == 0
    watcher = host.popen("watch", "mini", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: agent_tgid(host.tree) == watcher.pid)
        target = tmp_path / "opened"
        target.write_text("x")
        # The pipe holds 64 KiB: a few hundred open events fill it, once watch gets the CPU to
        # write them; a busy host can hold it back for seconds, so this goes on until it blocks.
        blocked, deadline = False, time.monotonic() + 60
        while not blocked and time.monotonic() < deadline:
            for _ in range(500):
                os.close(os.open(target, os.O_RDONLY))
            blocked = "pipe_write" in Path(f"/proc/{watcher.pid}/wchan").read_text()
        assert blocked, "watch never blocked on the full pipe"
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(timeout=15)  # nothing reads the pipe meanwhile: that is the reader that hung
        out, err = watcher.communicate()
    finally:
        watcher.kill()
    assert watcher.returncode == 143 and "Traceback" not in err, err
    assert out.endswith("\n") and all(json.loads(line) for line in out.splitlines())
    assert host.cli("unload", "mini").returncode == 0


def test_already_loaded_is_refused_before_any_bpf_call(host: Host, tmp_path: Path) -> None:
    assert host.cli("load", "mini").returncode == 0
    # With libbpf unloadable, any road to a bpf() call would end in LibbpfMissing instead.
    proc = subprocess.run([sys.executable, "-m", "hids_bytecode", "load", "mini"], capture_output=True, text=True,
                          env={**host.env, "HIDS_LIBBPF": "/nonexistent/libbpf.so.1"}, check=False)
    assert proc.returncode == EXIT_CODES["AlreadyLoaded"], proc.stderr
    if shutil.which("strace"):
        trace = tmp_path / "strace"
        proc = subprocess.run(["strace", "-f", "-e", "trace=bpf", "-o", str(trace), sys.executable, "-m",
                               "hids_bytecode", "load", "mini"], capture_output=True, text=True, env=host.env,
                              check=False)
        assert proc.returncode == EXIT_CODES["AlreadyLoaded"], proc.stderr
        assert "bpf(" not in trace.read_text()
    assert host.cli("unload", "mini").returncode == 0


def test_parallel_loads_leave_one_complete_set(host: Host) -> None:
    procs = [host.popen("load", "mini", stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(10)]
    codes = sorted(p.wait(timeout=120) for p in procs)
    for p in procs:
        p.communicate()
    assert codes == [0] + [EXIT_CODES["AlreadyLoaded"]] * 9
    assert host.state() == "complete" and host.leftovers() == []
    assert host.cli("unload", "mini").returncode == 0
    assert not host.tree.exists()


def load_seconds(host: Host) -> tuple[float, float]:
    """A whole `load` on this (shared, busy) machine, and the part of it after start-up (what a
    command that finds nothing to do takes): the windows kills and signals aim at."""
    start = time.monotonic()
    assert host.cli("load", "mini").returncode == 0
    took = time.monotonic() - start
    start = time.monotonic()
    assert host.cli("unload", "mini").returncode == 0
    assert host.cli("unload", "mini").returncode == EXIT_CODES["NotLoaded"]
    startup = (time.monotonic() - start) / 2
    return took, max(took - startup, 0.02)


def load_at_lock(host: Host, **kw: object) -> subprocess.Popen:
    """A `load` seen holding the tree's lock (or already over): where kills and signals aim at the
    load itself, not at the interpreter's start-up, which no Python program can shield. Watched
    every 2 ms, so "at the lock" means that even where a load is over in a few ms."""
    proc = host.popen("load", "mini", stdout=subprocess.DEVNULL, **kw)
    assert wait_for(lambda: holds_open(proc.pid, host.tree) or proc.poll() is not None, timeout=30, step=0.002)
    return proc


def test_kill_9_during_load_leaves_all_or_nothing(host: Host) -> None:
    window, work = load_seconds(host)
    staged = 0

    def kill_after(delay: float, from_lock: bool = True) -> str:
        nonlocal staged
        if from_lock:
            proc = load_at_lock(host, stderr=subprocess.DEVNULL)
        else:
            proc = host.popen("load", "mini", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        state = host.state()
        assert state in ("absent", "complete"), state
        staged += any(name.startswith("_staging_") for name in host.leftovers())
        # The next lock holder removes what the dead one staged; then nothing of it is left.
        unloaded = host.cli("unload", "mini")
        assert unloaded.returncode in (0, EXIT_CODES["NotLoaded"]), unloaded.stderr
        assert not host.tree.exists(), sorted(p.name for p in host.tree.iterdir())
        return state

    # Kill times sweep the load proper (lock, bpf(), attach, pin, rename) from the lock on, and a
    # few land anywhere in the whole command, start-up included.
    seen = [kill_after(work * 1.5 * i / 11) for i in range(12)]
    seen += [kill_after(window * i / 4, from_lock=False) for i in range(1, 5)]
    # A busy machine stretches or shrinks the load against what was measured; then the sweep goes
    # on past either end until it has seen both sides, so it never passes without having aimed at both.
    late, early = work * 1.5, work / 4
    for _ in range(12):
        if "complete" not in seen:
            late *= 2
            seen.append(kill_after(late))
        elif "absent" not in seen:
            early /= 2
            seen.append(kill_after(early))
        else:
            break
    assert set(seen) == {"absent", "complete"}, f"every kill landed on one side: {seen}"
    print(f"window {window:.2f} s, load proper {work:.2f} s; {len(seen)} kills: "
          f"{seen.count('absent')} absent, {seen.count('complete')} complete; "
          f"{staged} left a staging dir for the next holder")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_load_exits_cleanly(host: Host, signum: int) -> None:
    rng = random.Random(signum)
    _, work = load_seconds(host)

    def signal_after(delay: float) -> bool:
        """Whether the signal stopped the command (else it came after the command was done)."""
        proc = load_at_lock(host, stderr=subprocess.PIPE)
        time.sleep(delay)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=30)
        assert "Traceback" not in err, err
        assert proc.returncode in (0, 128 + signum), (proc.returncode, err)
        state = host.state()
        assert state in ("absent", "complete") and host.leftovers() == [], (state, host.leftovers())
        if state == "complete":
            assert host.cli("unload", "mini").returncode == 0
        assert not host.tree.exists()
        return proc.returncode == 128 + signum

    # The first signal goes as soon as the lock is held, so one lands even where a load is over in
    # a few ms; the others anywhere in the load proper as measured.
    interrupted = [signal_after(rng.uniform(0, work) if attempt else 0) for attempt in range(8)]
    # A busy moment can hold this process back past a short load's end every time; then more go at
    # once, so the check that one landed fails only when no signal ever stops a load.
    for _ in range(12):
        if any(interrupted):
            break
        interrupted.append(signal_after(0))
    assert any(interrupted), f"no signal landed while the load ran ({len(interrupted)} tries)"


def test_ctrl_c_under_heavy_events_exits_130(host: Host, tmp_path: Path) -> None:
    assert host.cli("load", "mini").returncode == 0
    stop = threading.Event()
    marker = tmp_path / "marker"
    marker.write_text("x")

    def flood() -> None:  # opens, each one an event in the ring
        while not stop.is_set():
            for _ in range(200):
                marker.read_text()

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for delay in (0.6, 0.9, 1.2, 1.5, 2.0):
            watcher = host.popen("watch", "mini", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            assert wait_for(lambda w=watcher: agent_tgid(host.tree) == w.pid)
            time.sleep(delay - 0.5)
            watcher.send_signal(signal.SIGINT)
            _, err = watcher.communicate(timeout=30)
            assert watcher.returncode == 130, err
            assert "Traceback" not in err and "libbpf" not in err, err
            assert agent_tgid(host.tree) == 0
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert host.cli("unload", "mini").returncode == 0


def test_watch_in_a_pid_namespace_is_refused_not_misfiltered(host: Host) -> None:
    """Inside a pid namespace (a container without hostPID) watch's pid is not the one the probes
    compare: writing it would filter some other host process, or none. Refused with one line."""
    assert host.cli("load", "mini").returncode == 0
    try:
        proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "hids_bytecode",
                               "watch", "mini"], capture_output=True, text=True, env=host.env, timeout=60)
        assert proc.returncode != 0 and "pid namespace" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert agent_tgid(host.tree) == 0
    finally:
        assert host.cli("unload", "mini").returncode == 0
