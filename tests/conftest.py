"""Shared fixtures: real docker, real Debian headers, real compiles.

Kernel headers, apt state and the toolchain image are shared by every test (and across runs,
under .cache/tests) because they are inputs, not what the tests examine; each test that looks
at compiling gets its own empty object cache.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A suite started as a background job of a non-interactive shell inherits SIGINT ignored, and so
# would every build and loader it starts (both keep an ignored SIGINT ignored, as a daemon expects):
# the Ctrl-C tests need it live, so the processes they start get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# pending: busy in parallel work. These modules need docker, root, network or VMs; until they carry
# `pytestmark = pytest.mark.integration` themselves, they are marked here.
_INTEGRATION_MODULES = {"test_verify", "test_verify_shards", "test_variants", "test_compat_page"}

TEST_PROJECT = ROOT / "tests" / "data" / "project"
SHARED_CACHE = ROOT / ".cache" / "tests"


def fresh_cache(tmp: Path) -> Path:
    """A cache dir whose object store is empty but whose headers and apt state are shared."""
    cache = tmp / "cache"
    cache.mkdir(parents=True)
    for sub in ("headers", "apt", "state", "btf"):
        (SHARED_CACHE / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(SHARED_CACHE / sub)
    return cache


def copy_project(dest: Path) -> Path:
    """A copy of the two-kernel test project, so a test may edit its sources."""
    shutil.copytree(TEST_PROJECT, dest)
    return dest


def run_build(matrix: Path, build_dir: Path, cache: Path, *extra: str) -> subprocess.CompletedProcess:
    """`invoke build-all` as a user runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-all", "--matrix", str(matrix),
         "--build-dir", str(build_dir), "--cache-dir", str(cache), *extra],
        capture_output=True, text=True, cwd=ROOT,
    )


@pytest.fixture(scope="session")
def built_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """build/ of the two-kernel test project (hello x 2 kernels x 4 variants), built once."""
    tmp = tmp_path_factory.mktemp("built-project")
    proc = run_build(TEST_PROJECT / "kernels.yaml", tmp / "build", fresh_cache(tmp), "--no-bundle")
    assert proc.returncode == 0, proc.stderr
    return tmp / "build"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in _INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)
