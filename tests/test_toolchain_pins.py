"""Issue #18: the toolchain's identity is its exact packages. Fast checks of the pins and the
recipe; then, with real docker and Debian's archive, a pin the suite no longer serves stops the
build before any compile, and an image rebuilt from scratch with the same pins yields the same
bytes."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import docker
import pytest
from conftest import ROOT, TEST_PROJECT, copy_project, fresh_cache, run_build

from hidsbuild.errors import ConfigError
from hidsbuild.kernels import load_matrix
from hidsbuild.toolchain import _render_dockerfile, toolchain_id

pytestmark = pytest.mark.integration


def _matrix_text() -> str:
    return (TEST_PROJECT / "kernels.yaml").read_text()


def test_every_pin_is_installed_exactly_and_is_part_of_the_identity() -> None:
    tc = load_matrix(TEST_PROJECT / "kernels.yaml").toolchain
    dockerfile = _render_dockerfile(tc)
    install = next(line for line in dockerfile.splitlines() if "apt-get install" in line)
    assert sorted(re.findall(r"(\S+)=(\S+)", install)) == sorted(tc.packages)
    moved = dataclasses.replace(tc, packages=tuple((n, v + "+1") if n == "libllvm19" else (n, v)
                                                   for n, v in tc.packages))
    assert toolchain_id(moved) != toolchain_id(tc)


@pytest.mark.parametrize("edit, reason", [
    (lambda t: t.replace('    bpftool: "7.1.0+6.1.176-1"\n', ""), "must pin bpftool"),
    (lambda t: t.replace('clang-19: "1:19.1.7-3~deb12u1"', 'clang-19: "latest please"'), "is not a Debian version"),
    (lambda t: t.replace('clang-19: "1:19.1.7-3~deb12u1"', 'Clang_19: "1:19.1.7-3~deb12u1"'),
     "is not a Debian package"),
])
def test_bad_pins_are_refused(tmp_path: Path, edit, reason: str) -> None:
    project = copy_project(tmp_path / "p")
    (project / "kernels.yaml").write_text(edit(_matrix_text()))
    with pytest.raises(ConfigError, match=reason):
        load_matrix(project / "kernels.yaml")


def test_a_pin_no_longer_served_stops_the_build_before_any_compile(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    (project / "kernels.yaml").write_text(_matrix_text().replace('llvm-19: "1:19.1.7-3~deb12u1"',
                                                                 'llvm-19: "1:19.1.7-3~deb12u0"'))
    cache = fresh_cache(tmp_path)
    proc = run_build(project / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert proc.returncode == 4, proc.stderr
    assert "llvm-19 pinned 1:19.1.7-3~deb12u0, bookworm serves 1:19.1.7-3~deb12u1" in proc.stderr
    assert "invoke kernels.discover --toolchain --write kernels.yaml" in proc.stderr
    assert not list((cache / "objects").glob("*/*/unit.o")) and not (tmp_path / "b").exists()


def test_image_rebuilt_from_scratch_gives_byte_identical_objects(tmp_path: Path) -> None:
    first = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "a", fresh_cache(tmp_path / "1"), "--no-bundle")
    assert first.returncode == 0, first.stderr
    tag = f"hids-toolchain:{toolchain_id(load_matrix(TEST_PROJECT / 'kernels.yaml').toolchain)}"
    before = docker.from_env().images.get(tag).id
    again = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", fresh_cache(tmp_path / "2"), "--no-bundle",
                      "--rebuild-toolchain")
    assert again.returncode == 0, again.stderr
    assert docker.from_env().images.get(tag).id != before, "the image was not rebuilt"
    units = [{u["unit"]: u["sha256"] for u in json.loads((tmp_path / d / "index.json").read_text())["units"]}
             for d in ("a", "b")]
    assert units[0] == units[1] and len(units[0]) == 4  # 2 kernels x the 2 runnable variants


def test_refreshing_the_pins_is_one_command_that_keeps_the_file(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    current = _matrix_text()
    stale = current.replace('llvm-19: "1:19.1.7-3~deb12u1"', 'llvm-19: "1:19.1.7-3~deb12u0"')
    (project / "kernels.yaml").write_text(stale)
    proc = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "kernels.discover",
                           "--toolchain", "--write", str(project / "kernels.yaml")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "updated  llvm-19: 1:19.1.7-3~deb12u0 -> 1:19.1.7-3~deb12u1" in proc.stdout
    assert (project / "kernels.yaml").read_text() == current  # comments and every other line kept
