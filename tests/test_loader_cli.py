"""The hids-bytecode command as a user runs it: one-line reasons and distinct exit codes for bad
input, the integrity check before any bpf() call, list/audit/--version/--help."""

# ruff: noqa: E402
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT, clone_data
from hids_bytecode.errors import EXIT_CODES

_SELECTION = ["--debug", "--strict", "--runtime-compile", "--json", "--verbose", "--btf"]
# What each command's --help must name and explain: written here, not read from the parser.
COMMANDS = {
    "select": ["programs", "--explain", "--detail", "--kernel", "--arch", "--version-signature", *_SELECTION],
    "load": ["programs", "--agent-pid", "--backend", *_SELECTION],
    "unload": ["programs", "--json"],
    "watch": ["programs", "--format", "--window-ms", "--count", *_SELECTION],
    "stats": ["programs", "--json", "--prometheus"],
    "list": ["--json"],
    "audit": ["--json"],
    "provenance": ["--json"],
}


def run(data: Path | None, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(ROOT / "loader"),
               "HIDS_BYTECODE_PIN_ROOT": f"/sys/fs/bpf/hids-test-{os.getpid()}", **env}
    if data is not None:
        environ["HIDS_BYTECODE_DATA"] = str(data)
    return subprocess.run([sys.executable, "-m", "hids_bytecode", *args], capture_output=True, text=True, env=environ)


def assert_one_line_failure(proc: subprocess.CompletedProcess, error: str) -> None:
    assert proc.returncode == EXIT_CODES[error], proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("hids-bytecode: ")


def test_exit_codes_are_distinct() -> None:
    assert len(set(EXIT_CODES.values())) == len(EXIT_CODES)


def _explanation(help_text: str, name: str) -> str:
    """The help text argparse prints for option or positional `name` (same line or the next)."""
    lines = help_text.splitlines()
    for index, line in enumerate(lines):
        entry = re.match(rf"  (?:-\w, )?{re.escape(name)}\b(?: [A-Z_]+| {{[^}}]+}})?(?:\s{{2,}}(.*))?$", line)
        if entry:
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            return entry.group(1) or following
    return ""


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_explains_itself(command: str) -> None:
    proc = run(None, command, "--help")
    assert proc.returncode == 0, proc.stderr
    usage, _, rest = proc.stdout.partition("\n\n")
    assert usage.startswith(f"usage: hids-bytecode {command} ")
    description = rest.split("\n\n", 1)[0]
    assert not description.startswith(("positional arguments", "options")), f"{command} has no description"
    for name in COMMANDS[command]:
        assert name.startswith("-") or name in usage, f"{command}'s usage omits {name}"
        assert len(_explanation(proc.stdout, name)) > 10, f"{command} --help does not explain {name}"


def test_version_list_audit(loader_data: Path) -> None:
    assert run(loader_data, "--version").stdout.strip() == "hids-bytecode 0.0.test (source test" + "0" * 60 + ")"
    listed = json.loads(run(loader_data, "list", "--json").stdout)
    assert {o["kind"] for o in listed["objects"]} == {"exact", "core"}
    verified = run(loader_data, "audit")
    assert verified.returncode == 0 and "4/4 objects ok" in verified.stdout


def test_missing_and_malformed_manifest(tmp_path: Path) -> None:
    assert_one_line_failure(run(tmp_path, "list"), "ManifestError")
    (tmp_path / "manifest.json").write_text("{not json")
    assert_one_line_failure(run(tmp_path, "select"), "ManifestError")
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": 1, "objects": [{"unit": "x"}]}))
    proc = run(tmp_path, "audit")
    assert_one_line_failure(proc, "ManifestError")
    assert "lacks program" in proc.stderr


def _tamper(data: Path) -> Path:
    manifest = json.loads((data / "manifest.json").read_text())
    obj = data / next(e["object"] for e in manifest["objects"] if e["program"] == "mini")
    blob = bytearray(obj.read_bytes())
    blob[-1] ^= 0xFF
    obj.write_bytes(bytes(blob))
    return obj


@pytest.mark.integration  # root: loads, or takes the pin tree
def test_tampered_object_is_refused_before_any_bpf_call(loader_data: Path, tmp_path: Path) -> None:
    data = clone_data(loader_data, tmp_path / "data")
    obj = _tamper(data)
    # With libbpf made unloadable, reaching any bpf() call would fail as LibbpfMissing instead:
    # IntegrityError proves the hash was checked first.
    proc = run(data, "load", "mini", HIDS_LIBBPF="/nonexistent/libbpf.so.1")
    assert_one_line_failure(proc, "IntegrityError")
    assert hashlib.sha256(obj.read_bytes()).hexdigest()[:16] in proc.stderr
    assert not Path(f"/sys/fs/bpf/hids-test-{os.getpid()}").exists()
    verified = run(data, "audit")
    assert verified.returncode == EXIT_CODES["IntegrityError"] and "FAIL mini/" in verified.stdout


@pytest.mark.integration  # root: loads, or takes the pin tree
def test_missing_libbpf_names_the_package(loader_data: Path) -> None:
    proc = run(loader_data, "load", "mini", HIDS_LIBBPF="/nonexistent/libbpf.so.1")
    assert_one_line_failure(proc, "LibbpfMissing")
    assert "libbpf1" in proc.stderr


@pytest.mark.integration  # root: loads, or takes the pin tree
def test_verifier_rejection_is_one_line_and_leaves_no_pins(loader_data: Path) -> None:
    proc = run(loader_data, "load", "rejected")
    assert_one_line_failure(proc, "LoadError")
    assert re.search(r"program \w+ rejected by the verifier: invalid access to map value", proc.stderr)
    assert not Path(f"/sys/fs/bpf/hids-test-{os.getpid()}/rejected").exists()


@pytest.mark.integration  # root: loads, or takes the pin tree
def test_unload_of_nothing_loaded(loader_data: Path) -> None:
    assert_one_line_failure(run(loader_data, "unload", "mini"), "NotLoaded")


def test_select_explain_and_json(loader_data: Path) -> None:
    explained = run(loader_data, "select", "mini", "--explain")
    assert explained.returncode == 0
    assert "syscall_wrapper" in explained.stdout and "from /proc/kallsyms line" in explained.stdout
    assert f"TAKE exact    mini/{os.uname().release}/w1d0" in explained.stdout
    doc = json.loads(run(loader_data, "select", "mini", "--json").stdout)
    assert doc["choices"][0]["stage"] == "exact"
    assert doc["facts"]["release"] == {"value": os.uname().release, "source": "uname -r"}
    strict_debug = run(loader_data, "select", "mini", "--debug", "--strict")
    assert strict_debug.returncode == EXIT_CODES["NoMatch"] and "--strict" in strict_debug.stdout


def test_runtime_compile_refusal_lists_what_was_tried(loader_data: Path) -> None:
    # The test manifest's entries carry no compile recipe, so there is nothing to compile from.
    proc = run(loader_data, "select", "mini", "--debug", "--runtime-compile", "--json")
    refused = json.loads(proc.stdout)["refused"][0]
    assert refused["error"] == "NoMatch"
    assert [s["stage"] for s in refused["steps"]] == ["exact", "core", "runtime"]
    assert "debug False != wanted True" in refused["steps"][1]["reason"]


@pytest.mark.integration  # root: loads, or takes the pin tree
def test_unprivileged_user_selects_but_cannot_load(loader_data: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    # A real unprivileged run: kallsyms still names the wrapper (addresses hidden), bpf() is refused.
    python = Path("/usr/bin/python3")
    if not python.exists() or shutil.which("setpriv") is None:
        pytest.skip("needs /usr/bin/python3 and setpriv")
    public = Path(tempfile.mkdtemp(prefix="hids-loader-"))
    try:
        shutil.copytree(loader_data, public / "data")
        shutil.copytree(ROOT / "loader" / "hids_bytecode", public / "hids_bytecode")
        for path in [public, *public.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(public), "HIDS_BYTECODE_DATA": str(public / "data")}
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(python), "-m", "hids_bytecode"]
        selected = subprocess.run([*nobody, "select", "mini", "--json"], capture_output=True, text=True, env=env)
        assert selected.returncode == 0, selected.stderr
        wrapper = json.loads(selected.stdout)["facts"]["syscall_wrapper"]
        assert "addresses hidden by kptr_restrict" in wrapper["source"]
        loaded = subprocess.run([*nobody, "load", "mini"], capture_output=True, text=True, env=env)
        assert_one_line_failure(loaded, "NotPermitted")
    finally:
        shutil.rmtree(public)
