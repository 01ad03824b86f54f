"""The per-boot host-facts cache (hostcache.py, docs/THREAT_MODEL.md "Start-up"): a hit gives the
facts a scan gives; a cache a non-root user could have written (their directory, their file, a
directory they can write, a symlink) is refused and the facts are scanned again; another boot's
cache is ignored; a non-root loader writes nothing and is still right. The attacker is a real
unprivileged user (setpriv, uid 65534); the kallsyms scanned is this host's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hids_bytecode.hostcache import FACTS_NAME, RUN_ENV, boot_id
from hids_bytecode.hostinfo import HostFacts, gather
from hids_bytecode.kallsyms import detect_syscall_wrapper

ROOT = Path(__file__).resolve().parent.parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="needs root and setpriv for a real unprivileged user")
pytestmark = needs_root


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A root-owned sticky 1777 directory under /tmp, like /run on a host that made it so: other
    users can create entries in it (tmp_path's 0700 ancestors would keep them out)."""
    path = Path(tempfile.mkdtemp(prefix="hids-run-"))
    path.chmod(0o1777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def run_dir(shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = shared_dir / "hids-bytecode"
    monkeypatch.setenv(RUN_ENV, str(path))
    return path


def _source(facts: HostFacts) -> str:
    return next(f.source for f in facts.facts if f.name == "syscall_wrapper")


def _poison(path: Path) -> None:
    """Facts of this boot and kernel claiming the opposite wrapper: believed, they would pick the
    wrong objects."""
    scanned = detect_syscall_wrapper()
    u = os.uname()
    doc = {"format": 1, "boot_id": boot_id(), "kallsyms": "/proc/kallsyms", "release": u.release,
           "version": u.version, "machine": u.machine,
           "wrapper": {"wrapper": not scanned.wrapper, "prefix": "sys_", "symbol": "sys_open", "line": 1}}
    path.write_text(json.dumps(doc))


def test_second_gather_is_a_hit_with_the_same_facts(run_dir: Path) -> None:
    first = gather()
    assert "scanned (no cache yet), cache written to" in _source(first)
    st = run_dir.stat()
    assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
    facts_file = run_dir / FACTS_NAME
    assert (facts_file.stat().st_uid, facts_file.stat().st_mode & 0o777) == (0, 0o600)
    assert [p.name for p in run_dir.iterdir()] == [FACTS_NAME]  # no temporary file left
    second = gather()
    assert f"cached for this boot in {facts_file}" in _source(second)
    assert second.wrapper == first.wrapper == detect_syscall_wrapper()
    assert second == first


def test_root_written_cache_is_believed(run_dir: Path) -> None:
    """The control for the refusals below: the same poisoned content, root's, in root's 0700 dir,
    is used, so a refusal is the checks' doing and not a format mismatch."""
    gather()
    _poison(run_dir / FACTS_NAME)
    assert gather().wrapper.wrapper is not detect_syscall_wrapper().wrapper


def test_directory_made_first_by_another_user_is_refused(shared_dir: Path, run_dir: Path) -> None:
    subprocess.run([*NOBODY, "mkdir", "-m", "0700", str(run_dir)], check=True)
    _poison_as_nobody(run_dir / FACTS_NAME)
    facts = gather()
    assert facts.wrapper == detect_syscall_wrapper()
    assert "cache refused" in _source(facts) and "owned by uid 65534" in _source(facts)
    assert "cache not written" in _source(facts)
    assert (run_dir / FACTS_NAME).stat().st_uid == 65534  # nothing of root's written in their dir


def _poison_as_nobody(path: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hids-poison-"))
    _poison(tmp / "doc")
    os.chmod(tmp, 0o755)
    os.chmod(tmp / "doc", 0o644)
    subprocess.run([*NOBODY, "cp", str(tmp / "doc"), str(path)], check=True)
    shutil.rmtree(tmp)


def test_file_of_another_user_in_roots_directory_is_refused_and_replaced(run_dir: Path) -> None:
    gather()
    _poison(run_dir / FACTS_NAME)
    os.chown(run_dir / FACTS_NAME, 65534, 65534)  # made while the dir was looser, or handed over
    facts = gather()
    assert facts.wrapper == detect_syscall_wrapper()
    assert "cache refused" in _source(facts) and "owned by uid 65534" in _source(facts)
    assert (run_dir / FACTS_NAME).stat().st_uid == 0  # root's scan replaced it
    assert "cached for this boot" in _source(gather())


def test_oversized_facts_file_is_refused_unread(run_dir: Path) -> None:
    gather()
    (run_dir / FACTS_NAME).write_bytes(b" " * (1 << 20))
    facts = gather()
    assert "cache refused: more than 65536 bytes" in _source(facts)
    assert facts.wrapper == detect_syscall_wrapper()


def test_directory_others_can_write_is_refused(run_dir: Path) -> None:
    gather()
    os.chmod(run_dir, 0o777)
    (run_dir / FACTS_NAME).unlink()
    _poison_as_nobody(run_dir / FACTS_NAME)
    facts = gather()
    assert facts.wrapper == detect_syscall_wrapper()
    assert "cache refused" in _source(facts) and "writable by group or others" in _source(facts)


def test_symlinked_run_dir_is_refused(shared_dir: Path, run_dir: Path) -> None:
    real = shared_dir / "real"
    real.mkdir(mode=0o700)
    _poison(real / FACTS_NAME)
    run_dir.symlink_to(real)
    facts = gather()
    assert facts.wrapper == detect_syscall_wrapper()
    assert "cache refused" in _source(facts) and "symlink" in _source(facts)


def test_another_boots_cache_is_ignored(run_dir: Path) -> None:
    gather()
    _poison(run_dir / FACTS_NAME)
    doc = json.loads((run_dir / FACTS_NAME).read_text())
    doc["boot_id"] = "00000000-0000-0000-0000-000000000000"
    (run_dir / FACTS_NAME).write_text(json.dumps(doc))
    facts = gather()
    assert facts.wrapper == detect_syscall_wrapper()
    assert "another boot" in _source(facts)
    assert json.loads((run_dir / FACTS_NAME).read_text())["boot_id"] == boot_id()  # rewritten for this boot


def test_non_root_writes_nothing_and_is_right(shared_dir: Path, run_dir: Path) -> None:
    python = Path("/usr/bin/python3")  # the test's own interpreter may sit under root's 0700 home
    if not python.exists():
        pytest.skip("needs /usr/bin/python3")
    code = ("from hids_bytecode.hostinfo import gather; f = gather(); "
            "print(f.wrapper.wrapper, f.wrapper.symbol, [x.source for x in f.facts if x.name == 'syscall_wrapper'][0])")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), RUN_ENV: str(run_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([*NOBODY, str(python), "-c", code], check=True, capture_output=True, text=True,
                         env=env, cwd="/").stdout
    scanned = detect_syscall_wrapper()
    assert out.startswith(f"{scanned.wrapper} {scanned.symbol} ")
    assert "not root: no cache" in out
    assert not run_dir.exists()


def test_explain_says_where_the_wrapper_came_from(tmp_path: Path, run_dir: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"schema": 1, "version": "0.0.test", "objects": []}))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(data), RUN_ENV: str(run_dir)}

    def explain() -> str:
        proc = subprocess.run([sys.executable, "-m", "hids_bytecode", "select", "--explain"], capture_output=True,
                              text=True, env=env, check=True)
        return next(line for line in proc.stdout.splitlines() if "syscall_wrapper" in line)

    assert "scanned (no cache yet)" in explain()
    assert f"cached for this boot in {run_dir / FACTS_NAME}" in explain()
