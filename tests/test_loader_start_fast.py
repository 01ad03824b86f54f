"""A cold `select` imports only what it uses (issue 16: start in 50 ms): no typing, dataclasses,
argparse, ctypes or the load/stream half of the loader, while it still reads the manifest, the host
facts and each chosen object's bytes and hash. A plain `select` argv is parsed without argparse,
into the namespace argparse would give. Fast tier: no docker, no root, no timing."""

# ruff: noqa: E402
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import PROGRAM, ROOT
from hids_bytecode import cli

# Each was on the select path once, or would cost a cold start if it came back: typing, dataclasses
# (inspect, ast, dis), argparse (gettext, locale; shutil through its help formatter), what loads and
# streams (ctypes, libbpf, the pin tree), the runtime compiler, the signature library with no key.
FORBIDDEN = {"typing", "dataclasses", "inspect", "ast", "dis", "argparse", "gettext", "locale", "shutil", "ctypes",
             "subprocess", "tempfile", "base64", "signal", "hids_bytecode.recipe", "hids_bytecode.libbpf",
             "hids_bytecode.attach", "hids_bytecode.pins", "hids_bytecode.eventstream", "hids_bytecode.libcrypto",
             "hids_bytecode.runtime_compile"}

# -S: no site, so no .pth file of this venv imports anything before the probe looks.
_PROBE = """
import io, json, sys
out = io.StringIO()
sys.stdout, real = out, sys.stdout
from hids_bytecode.cli import main
code = main(sys.argv[1:])
sys.stdout = real
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def _select(data: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "loader"), "HIDS_BYTECODE_DATA": str(data)}
    proc = subprocess.run([sys.executable, "-S", "-c", _PROBE, "select", *args], capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cold_select_imports_none_of_the_slow_modules(loader_data: Path) -> None:
    probe = _select(loader_data, "--json")
    assert probe["code"] == 0
    doc = json.loads(probe["out"])
    choice = next(c for c in doc["choices"] if c["program"] == PROGRAM)
    assert choice["stage"] == "exact" and choice["object"].startswith(str(loader_data / "objects"))
    assert doc["facts"]["release"]["value"] == os.uname().release and doc["signature"]["verified"] is False
    modules = set(probe["modules"])
    assert not modules & FORBIDDEN, sorted(modules & FORBIDDEN)
    # What it does use is still there: the manifest parsed, the object read beneath the data dir,
    # hashed and its ELF inventory compared (integrity.read_object).
    assert {"json", "hashlib", "hids_bytecode.integrity", "hids_bytecode.elfinfo", "hids_bytecode.safefs"} <= modules


def test_select_still_refuses_a_tampered_object(loader_data: Path, tmp_path: Path) -> None:
    """The control for the test above: without its slow modules, select still hashes what it picks."""
    from conftest_loader import clone_data
    data = clone_data(loader_data, tmp_path / "data")
    entries = json.loads((data / "manifest.json").read_text())["objects"]
    obj = data / next(e["object"] for e in entries if e["program"] == PROGRAM and e["kind"] == "exact")
    obj.write_bytes(obj.read_bytes() + b"\0")
    probe = _select(data, PROGRAM, "--json")
    doc = json.loads(probe["out"])
    assert probe["code"] == 17 and not doc["choices"]
    assert doc["refused"][0]["error"] == "IntegrityError" and "sha256" in doc["refused"][0]["reason"]


def _argparse(argv: list[str]) -> dict | None:
    try:
        return vars(cli.build_parser(cli._command_in(argv)).parse_args(argv, namespace=SimpleNamespace()))
    except SystemExit:
        return None


FLAGS = ["--json", "--explain", "--detail", "--debug", "--strict", "--runtime-compile", "--verbose"]
ARGVS = [
    *(["select", *flags] for n in range(len(FLAGS) + 1) for flags in itertools.combinations(FLAGS, n)),
    *(["select", *order] for order in itertools.permutations(["-v", "--json", "--verbose"])),
    ["select", "file"], ["select", "file", "net", "--json"], ["select", "--json", "file", "net"],
    ["select", "--json", "file", "--explain"], ["select", "file", "--json", "net"], ["select", "--json", "--json"],
    ["select", "", "--json"], ["select", "file", "--json", "--debug", "net"],
]
FALLBACK = [
    ["select", "--kernel", "6.1.0", "--json"], ["select", "-h"], ["select", "--js"], ["select", "--json=1"],
    ["select", "-vv"], ["select", "--", "file"], ["select", "-1"], ["--require-signature", "select", "--json"],
    ["--trusted-keys", "/etc/keys", "select"], ["list", "--json"], ["select", "--btf", "/x"], [],
]


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_quick_select_gives_argparses_namespace(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    quick = cli._quick_select(argv)
    expected = _argparse(argv)
    capsys.readouterr()
    if expected is None:  # argparse refuses it (programs in two runs): so must the quick parse, leaving it to argparse
        assert quick is None
    else:
        assert quick is not None and vars(quick) == expected


@pytest.mark.parametrize("argv", FALLBACK, ids=" ".join)
def test_other_argvs_go_to_argparse(argv: list[str]) -> None:
    assert cli._quick_select(argv) is None
