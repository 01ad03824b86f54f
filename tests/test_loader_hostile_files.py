"""The loader's files on a host where other users are the threat (issue 12, requirements 3, 7, 8):
the runtime-compile cache, the compilers, the manifest's paths and objects, broken pipes and
undecodable system files. Attackers are a real unprivileged user (setpriv, uid 65534); compilers
and objects are real; the one stand-in is a kernel-header tree that only has to exist for the
runtime plan to reach its clang call (this host ships no headers)."""

# ruff: noqa: E402
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT, clone_data, core_plan
from hids_bytecode.elfinfo import ElfError, inventory
from hids_bytecode.errors import EXIT_CODES, HostFactError, RuntimeCompileError
from hids_bytecode.hostinfo import gather
from hids_bytecode.manifest import Entry, load_manifest
from hids_bytecode.runtime_compile import CACHE_ENV, TRUSTED_DIRS, RuntimePlan, compile_object, plan_runtime_compile

pytestmark = pytest.mark.integration

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
needs_setpriv = pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                                   reason="needs root and setpriv for a real unprivileged user")


def run(data: Path, *args: str, stdout: int | None = subprocess.PIPE, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(data),
               "HIDS_BYTECODE_PIN_ROOT": f"/sys/fs/bpf/hids-test-{os.getpid()}", **env}
    return subprocess.run([sys.executable, "-m", "hids_bytecode", *args], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, env=environ, timeout=60)


def refused(proc: subprocess.CompletedProcess, error: str) -> str:
    """`select` reports a refused program on stdout, with the error's exit code."""
    assert proc.returncode == EXIT_CODES[error] and "Traceback" not in proc.stderr, proc.stderr
    assert f"refused ({error})" in proc.stdout, proc.stdout
    return proc.stdout


def one_line(proc: subprocess.CompletedProcess, error: str) -> str:
    assert proc.returncode == EXIT_CODES[error], proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr


def as_nobody(*argv: str, cwd: Path | None = None) -> None:
    subprocess.run([*NOBODY, *argv], check=True, cwd=cwd, capture_output=True)


# --- runtime compile: the cache ---------------------------------------------------------------

@pytest.fixture()
def shared() -> Iterator[Path]:
    """A root-owned 0755 dir in /tmp: the attacker can reach it (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hids-hostile-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.fixture()
def mini(loader_data: Path) -> Entry:
    return next(e for e in load_manifest(loader_data).entries if e.program == "mini" and e.kind == "exact")


@pytest.fixture()
def plan(loader_data: Path) -> RuntimePlan:
    """A real compile of the mini source with the CO-RE flags of the fixture (conftest_loader)."""
    clang = next((Path(d) / "clang" for d in sorted(Path("/usr/lib").glob("llvm-*/bin"))
                  if (Path(d) / "clang").exists()), None)
    if clang is None:
        pytest.skip("no /usr/lib/llvm-N/bin/clang")
    return core_plan(clang.resolve(), loader_data.parent / "work")


def test_cache_dir_is_created_0700_under_umask_000(mini: Entry, plan: RuntimePlan, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "var" / "cache" / "hids"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    old = os.umask(0)
    try:
        data, path = compile_object(plan, mini, gather())
    finally:
        os.umask(old)
    for directory in (cache, cache.parent, cache.parent.parent):
        assert stat.S_IMODE(directory.lstat().st_mode) == 0o700, directory
    assert path.parent == cache and path.read_bytes() == data
    assert (cache / (path.name + ".sha256")).read_text().strip() == hashlib.sha256(data).hexdigest()
    assert {stat.S_IMODE(p.lstat().st_mode) for p in cache.iterdir()} == {0o600}
    assert inventory(data).maps == {"events", "counters", "config"}


@needs_setpriv
@pytest.mark.parametrize("attack", ["world-writable", "group-writable", "foreign-owned", "symlink",
                                    "writable-parent"])
def test_unsafe_cache_dir_is_refused(attack: str, mini: Entry, plan: RuntimePlan, shared: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    public = shared / "public"  # a world-writable sticky dir, as /tmp is
    public.mkdir()
    public.chmod(0o1777)
    cache = public / "cache"
    if attack == "foreign-owned":
        as_nobody("mkdir", "-m", "0700", str(cache))  # the attacker made it first
    elif attack == "symlink":
        as_nobody("mkdir", "-m", "0700", str(public / "theirs"))
        as_nobody("ln", "-s", str(public / "theirs"), str(cache))
    elif attack == "writable-parent":
        (public / "open").mkdir()
        (public / "open").chmod(0o777)  # not sticky: anyone may swap what is inside
        cache = public / "open" / "cache"
        cache.mkdir(mode=0o700)
    else:
        cache.mkdir()
        cache.chmod(0o777 if attack == "world-writable" else 0o770)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    with pytest.raises(RuntimeCompileError, match="refusing runtime-compile cache") as refused:
        compile_object(plan, mini, gather())
    assert "\n" not in str(refused.value)
    assert not any(cache.glob("*.o"))


@needs_setpriv
def test_cached_object_modified_or_planted_is_discarded_and_rebuilt(
        mini: Entry, plan: RuntimePlan, shared: Path, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    cache = shared / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    good, path = compile_object(plan, mini, gather())
    sidecar = cache / (path.name + ".sha256")

    # Modified in place (the bytes, not the sidecar): re-hashed, discarded, compiled again.
    blob = bytearray(good)
    blob[-8] ^= 0xFF
    path.write_bytes(bytes(blob))
    capfd.readouterr()
    assert compile_object(plan, mini, gather()) == (good, path)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "discarding it and compiling again" in err[0] and "sha256" in err[0]

    # Planted by another user, with a sidecar that matches it: the owner check refuses it. The
    # dir is opened up only for the plant, as a cache that once was writable would have been.
    evil = bytes(blob)
    (shared / "evil.o").write_bytes(evil)
    (shared / "evil.o").chmod(0o644)
    cache.chmod(0o777)
    path.unlink()
    sidecar.unlink()
    as_nobody("cp", str(shared / "evil.o"), str(path))
    as_nobody("sh", "-c", f"echo {hashlib.sha256(evil).hexdigest()} > {sidecar}")
    cache.chmod(0o700)
    assert path.stat().st_uid == 65534
    capfd.readouterr()
    assert compile_object(plan, mini, gather())[0] == good
    assert "owned by uid 65534" in capfd.readouterr().err
    assert path.stat().st_uid == 0 and path.read_bytes() == good

    # Not an object at all, even with a matching sidecar: re-validated as a BPF ELF.
    path.write_bytes(b"#!/bin/sh\n")
    sidecar.write_text(hashlib.sha256(b"#!/bin/sh\n").hexdigest())
    assert compile_object(plan, mini, gather())[0] == good
    assert "is not a BPF object" in capfd.readouterr().err


# --- runtime compile: the compilers --------------------------------------------------------------

FAKE = "#!/bin/sh\ntouch {marker}\necho 'clang version 99.0.0'\n"


@pytest.mark.parametrize("path_var", ["", ":", ".", ".:/usr/bin", "/usr/bin::/bin", "bin"])
def test_compilers_never_come_from_path(path_var: str, mini: Entry, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "cwd"
    (work / "bin").mkdir(parents=True)
    marker = tmp_path / "ran"
    for directory in (work, work / "bin"):
        for name in ("clang", "clang-99", "clang-19", "llc", "llvm-strip"):
            (directory / name).write_text(FAKE.format(marker=marker))
            (directory / name).chmod(0o755)
    release = gather().release
    headers = tmp_path / "src"
    (headers / f"linux-headers-{release}" / "include").mkdir(parents=True)
    entry = Entry({**mini.raw, "recipe": [{"tool": "clang", "args": ["-O2", "{source}"]}],
                   "toolchain": {"clang": "clang version 99.0.0"}}, mini.data)
    monkeypatch.chdir(work)
    monkeypatch.setenv("PATH", path_var)
    plan = plan_runtime_compile(entry, gather(), False, (headers,))
    assert not marker.exists(), f"a clang from PATH={path_var!r} was executed"
    if plan.ready:
        assert plan.clang is not None and str(plan.clang).startswith(("/usr/lib/llvm-", "/usr/bin/", "/usr/local/bin/"))
        assert plan.clang.stat().st_uid == 0
    else:
        assert "PATH is not searched" in plan.reason and all(d in plan.reason for d in TRUSTED_DIRS)


@needs_setpriv
def test_compiler_another_user_can_change_is_never_run(mini: Entry, shared: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(shared / "cache"))
    marker = shared / "ran"
    (shared / "fake").write_text(FAKE.format(marker=marker))
    (shared / "fake").chmod(0o755)
    theirs = shared / "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    as_nobody("cp", "-p", str(shared / "fake"), str(theirs / "clang"))
    with pytest.raises(RuntimeCompileError, match="not a root-owned compiler"):
        compile_object(core_plan(theirs / "clang", shared), mini, gather())
    assert not marker.exists()


# --- manifest paths and objects ------------------------------------------------------------------

def _edit(data: Path, program: str, **changes: object) -> dict:
    manifest = json.loads((data / "manifest.json").read_text())
    entry = next(e for e in manifest["objects"] if e["program"] == program and e["kind"] == "exact")
    entry.update(changes)
    (data / "manifest.json").write_text(json.dumps(manifest))
    return entry


def _object(data: Path, program: str) -> dict:
    manifest = json.loads((data / "manifest.json").read_text())
    return next(e for e in manifest["objects"] if e["program"] == program and e["kind"] == "exact")


@pytest.mark.parametrize("shape", ["absolute", "dotdot", "dotdot-inside", "dot", "empty"])
def test_manifest_path_outside_or_unnormalised_is_refused(shape: str, loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    rel = _object(data, "mini")["object"]
    # Each points at the real object (hash and all): only the path's shape is wrong.
    (tmp_path / "outside").mkdir()
    shutil.copy(data / rel, tmp_path / "outside" / "x.o")
    bad = {"absolute": str(data / rel), "dotdot": "../outside/x.o", "dotdot-inside": f"objects/../{rel}",
           "dot": f"./{rel}", "empty": ""}[shape]
    _edit(data, "mini", object=bad)
    for command in (["select", "mini"], ["load", "mini"], ["audit"], ["list"]):
        stderr = one_line(run(data, *command, HIDS_LIBBPF="/nonexistent/libbpf.so.1"), "ManifestError")
        assert "objects[" in stderr and "object" in stderr


def test_source_path_escaping_the_data_dir_is_refused(loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    entry = _object(data, "mini")
    _edit(data, "mini", source={**entry["source"], "path": "/etc/shadow"})
    assert "source path '/etc/shadow' is absolute" in one_line(run(data, "audit"), "ManifestError")


@pytest.mark.parametrize("where", ["file", "directory"])
def test_symlinked_object_is_refused(where: str, loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    rel = _object(data, "mini")["object"]
    elsewhere = tmp_path / "elsewhere"
    if where == "file":
        elsewhere.mkdir()
        (data / rel).rename(elsewhere / "x.o")
        (data / rel).symlink_to(elsewhere / "x.o")  # same bytes, same hash: only the link is wrong
    else:
        (data / "objects").rename(elsewhere)
        (data / "objects").symlink_to(elsewhere)
    stderr = one_line(run(data, "load", "mini", HIDS_LIBBPF="/nonexistent/libbpf.so.1"), "IntegrityError")
    assert "is a symlink" in stderr
    verified = run(data, "audit")
    assert verified.returncode == EXIT_CODES["IntegrityError"] and "is a symlink" in verified.stdout


def test_fifo_object_is_refused_without_hanging(loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    rel = _object(data, "mini")["object"]
    (data / rel).unlink()
    os.mkfifo(data / rel)
    assert "not a regular file" in refused(run(data, "select", "mini"), "IntegrityError")


def test_object_whose_programs_or_maps_differ_from_its_entry_is_refused(loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    entry = _object(data, "mini")
    # An entry re-pointed at another shipped object: the hash is right, the inventory is not.
    perf = _object(data, "mini_perf")
    _edit(data, "mini", object=perf["object"], sha256=perf["sha256"])
    stderr = one_line(run(data, "load", "mini", HIDS_LIBBPF="/nonexistent/libbpf.so.1"), "IntegrityError")
    assert "maps not in its manifest entry: scratch" in stderr
    # The right object, but its entry lists a program it does not have and omits a map.
    _edit(data, "mini", object=entry["object"], sha256=entry["sha256"], maps=["events", "counters"],
          programs=[*entry["programs"], {"name": "extra__kprobe", "section": "kprobe/x", "type": "kprobe"}])
    stderr = refused(run(data, "select", "mini"), "IntegrityError")
    assert "maps not in its manifest entry: config" in stderr and "extra__kprobe (kprobe/x)" in stderr
    verified = run(data, "audit")
    assert verified.returncode == EXIT_CODES["IntegrityError"]
    assert "does not match its manifest entry" in verified.stdout
    # Restored: accepted again (the check is not refusing everything).
    _edit(data, "mini", maps=entry["maps"], programs=entry["programs"])
    assert run(data, "select", "mini").returncode == 0


def test_elf_reader_refuses_what_is_not_a_bpf_object() -> None:
    with pytest.raises(ElfError, match="not an ELF"):
        inventory(b"#!/bin/sh\n" * 10)
    with pytest.raises(ElfError, match="not EM_BPF"):
        inventory(Path(sys.executable).resolve().read_bytes()[:4096])


# --- error hygiene -------------------------------------------------------------------------------

def test_closed_stdout_ends_quietly(loader_data: Path) -> None:
    # A pipe whose reader is already gone: every write fails, deterministically.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = run(loader_data, "select", "--explain", stdout=write_end)
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_select_explain_into_head_is_quiet(loader_data: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(loader_data)}
    pipeline = f"set -o pipefail; {sys.executable} -m hids_bytecode select --explain | head -1"
    proc = subprocess.run(["bash", "-c", pipeline], capture_output=True, text=True, env=env, timeout=60)
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "facts:\n")


def test_undecodable_os_release_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "os-release"
    bad.write_bytes(b'ID=debian\nVERSION_ID="\xff\xfe"\n')
    with pytest.raises(HostFactError, match="not valid UTF-8"):
        gather(os_release=(bad,))


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs root and unshare")
def test_undecodable_os_release_on_the_real_host_is_one_line(loader_data: Path, tmp_path: Path) -> None:
    # The real file, in a private mount namespace: nothing outside this process tree sees it.
    bad = tmp_path / "os-release"
    bad.write_bytes(b'ID=debian\nPRETTY_NAME="\xc3\x28"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(loader_data)}
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                           f"mount --bind {bad} /etc/os-release && exec {sys.executable} -m hids_bytecode select"],
                          capture_output=True, text=True, env=env, timeout=60)
    stderr = one_line(proc, "HostFactError")
    assert stderr.startswith("hids-bytecode: /etc/os-release is not valid UTF-8")


def test_libbpf_named_by_the_environment_must_be_roots(tmp_path: Path) -> None:
    """Loading a library runs its code as root: HIDS_LIBBPF naming a file another user could have
    written (here: world-writable) is refused before it is opened."""
    planted = tmp_path / "libbpf.so.1"
    planted.write_bytes(Path("/usr/lib/x86_64-linux-gnu/libbpf.so.1").read_bytes()
                        if Path("/usr/lib/x86_64-linux-gnu/libbpf.so.1").exists() else b"\x7fELF")
    planted.chmod(0o666)
    code = "from hids_bytecode import libbpf; libbpf.get()"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_LIBBPF": str(planted)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "refused" in proc.stderr and "root-owned library" in proc.stderr
    env["HIDS_LIBBPF"] = "libbpf.so.1"  # relative: a search, not a choice root made
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "refused" in proc.stderr
