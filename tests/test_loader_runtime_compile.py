"""Runtime compilation reproduces the pipeline's objects byte for byte: the loader compiles the
stitched sources of the pipeline's test build (the `built_project` fixture of conftest.py) with
the host's clang and the same Debian header packages, by the manifest entries' own compile recipes
(rendered with the unpacked packages' trees, not the container's paths).

Those kernels cannot run here, so the host facts are this host's with the release, version and
syscall wrapper of the target kernel substituted: the one stand-in of this test."""

# ruff: noqa: E402
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

# conftest_loader is both imported here and a plugin: register it before the import.
pytest.register_assert_rewrite("conftest_loader")
pytest_plugins = ["conftest_loader"]

from conftest_loader import ROOT
from hids_bytecode.hostinfo import gather
from hids_bytecode.kallsyms import WrapperFact
from hids_bytecode.kversion import upstream_version
from hids_bytecode.manifest import Entry
from hids_bytecode.runtime_compile import CACHE_ENV, compile_plan, plan_runtime_compile

pytestmark = pytest.mark.integration

HEADER_CACHE = ROOT / ".cache" / "tests" / "headers"


def _version_line(clang: Path) -> str:
    return subprocess.run([str(clang), "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _facts_for(entry: Entry):
    kernel = entry.raw["kernel"]
    version = upstream_version(kernel["release"], f"#1 SMP Debian {kernel['package_version']}")
    return gather().replace(release=kernel["release"], version=version,
                            wrapper=WrapperFact(entry.wrapper, "", "", 0, False))


def test_runtime_compile_matches_the_pipeline_objects(built_project: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    toolchain_clang = json.loads((built_project / "index.json").read_text())["units"][0]["toolchain"]["clang"]
    major = re.search(r"version (\d+)", toolchain_clang).group(1)
    host_clang = Path(f"/usr/lib/llvm-{major}/bin/clang")
    if not host_clang.exists() or _version_line(host_clang) != toolchain_clang.splitlines()[0]:
        pytest.skip(f"byte-identical output needs the toolchain's clang ({toolchain_clang}) on the host")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", f"{host_clang.parent}:{os.environ['PATH']}")
    header_dirs = tuple(sorted(HEADER_CACHE.glob("*/usr/src")))
    units = [Entry(u, built_project) for u in json.loads((built_project / "index.json").read_text())["units"]
             if u["kind"] == "exact"]
    assert {u.release for u in units} == {"6.1.0-50-cloud-amd64", "7.2.13+deb14-cloud-amd64"}
    for entry in units:
        facts = _facts_for(entry)
        plan = plan_runtime_compile(entry, facts, entry.debug, header_dirs)
        assert plan.ready, plan.reason
        built = compile_plan(plan, entry, facts).read_bytes()
        assert hashlib.sha256(built).hexdigest() == entry.sha256, entry.unit
