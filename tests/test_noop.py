"""A rebuild with nothing changed, with real docker for the first build: it needs no docker
engine, rewrites nothing (build/ nor the wheel), and yet never pairs cached objects with another
toolchain: changed pins miss every key and go to the engine for the image."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TEST_PROJECT, copy_project, fresh_cache

from hidsbuild.errors import ToolchainError

pytestmark = pytest.mark.integration

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}


def build(matrix: Path, build_dir: Path, cache: Path, dist: Path, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-all", "--matrix", str(matrix),
         "--build-dir", str(build_dir), "--cache-dir", str(cache), "--dist", str(dist)],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=900,
    )


def snapshot(*dirs: Path) -> dict[str, tuple[int, int, str]]:
    """Every file: inode, mtime (ns) and sha256; a rewrite changes the first two even with equal bytes."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for d in dirs for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """The test project built and bundled once: (cache, build dir, dist)."""
    tmp = tmp_path_factory.mktemp("noop")
    cache, build_dir, dist = fresh_cache(tmp), tmp / "build", tmp / "dist"
    proc = build(TEST_PROJECT / "kernels.yaml", build_dir, cache, dist)
    assert proc.returncode == 0, proc.stderr
    return cache, build_dir, dist


def test_no_op_rebuild_needs_no_engine_and_rewrites_nothing(warm: tuple[Path, Path, Path]) -> None:
    cache, build_dir, dist = warm
    before = snapshot(build_dir, dist)
    assert any(name.endswith(".whl") for name in before)
    proc = build(TEST_PROJECT / "kernels.yaml", build_dir, cache, dist, NO_ENGINE)
    assert proc.returncode == 0, proc.stderr
    assert "4 cached, 4 skipped, 0 to build" in proc.stderr
    assert "unchanged (the bytes these inputs make" in proc.stderr
    assert snapshot(build_dir, dist) == before


def test_changed_pins_reuse_no_cached_object_and_ask_the_engine(warm: tuple[Path, Path, Path],
                                                                 tmp_path: Path) -> None:
    # Same sources, headers and cache; only a pin differs, so the toolchain id does: objects the old
    # toolchain compiled must not be hits, and the build must go to the engine for the new image
    # (here unreachable), never finish on the cache alone.
    cache, _, _ = warm
    project = copy_project(tmp_path / "p")
    text = (project / "kernels.yaml").read_text()
    assert 'llvm-19: "1:19.1.7-3~deb12u1"' in text
    (project / "kernels.yaml").write_text(text.replace('llvm-19: "1:19.1.7-3~deb12u1"',
                                                       'llvm-19: "1:19.1.7-3~deb12u0"'))
    proc = build(project / "kernels.yaml", tmp_path / "b", cache, tmp_path / "dist", NO_ENGINE)
    assert proc.returncode == ToolchainError.exit_code, proc.stderr
    assert "0 cached, 4 skipped, 4 to build" in proc.stderr
    assert "docker engine unreachable" in proc.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "dist").exists()
