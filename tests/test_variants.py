"""Only variants that can run are built (issue 15, requirement 5): the no-wrapper variant (w0) only
for kernels whose .config lacks CONFIG_ARCH_HAS_SYSCALL_WRAPPER. Real Debian header trees, the real
two-kernel test build, the real wheel and the real loader selection.

Every kernel Debian serves today has the wrapper (x86_64 and arm64 since 4.17/4.19), so no real
kernel exercises "w0 is built": that branch is checked on skip_reason with a .config read from a
real tree minus the option, which is the only way such a kernel can exist here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import ROOT, SHARED_CACHE, TEST_PROJECT

from hidsbuild.headers import HeadersCache
from hidsbuild.kernels import load_matrix
from hidsbuild.units import WRAPPER_OPTION, enumerate_units, skip_reason

RELEASES = ("6.1.0-50-cloud-amd64", "7.2.13+deb14-cloud-amd64")


def _headers(built_project: Path):  # the session build has fetched both kernels' trees
    matrix = load_matrix(TEST_PROJECT / "kernels.yaml")
    cache = HeadersCache(SHARED_CACHE / "headers", None)
    return matrix, {k.release: cache.describe(k) for k in matrix.kernels}


def test_config_is_read_from_the_flavour_tree(built_project: Path) -> None:
    _, headers = _headers(built_project)
    for release, tree in headers.items():
        config = tree.kernel_config()
        assert config is not None and config[WRAPPER_OPTION] == "y", release
        assert config["CONFIG_BPF_SYSCALL"] == "y"
        flavour = tree.packages[int(tree.flavour.split("/")[0])] / tree.flavour.split("/", 1)[1]
        assert f"{WRAPPER_OPTION}=y" in (flavour / ".config").read_text()


def test_skip_reason_follows_the_config(built_project: Path) -> None:
    matrix, headers = _headers(built_project)
    units = enumerate_units(matrix)
    config = headers[RELEASES[0]].kernel_config()
    assert config is not None
    without = {k: v for k, v in config.items() if k != WRAPPER_OPTION}
    w0 = [u for u in units if u.kernel and not u.variant.syscall_wrapper]
    w1 = [u for u in units if u.kernel and u.variant.syscall_wrapper]
    assert w0 and w1
    for unit in w0:
        assert WRAPPER_OPTION in (skip_reason(unit, config) or "")
        assert skip_reason(unit, without) is None  # a kernel without the wrapper keeps its w0 objects
        assert skip_reason(unit, None) is None  # unknown .config: built, never silently dropped
    assert all(skip_reason(u, config) is None for u in w1)
    core = [u for u in units if u.kernel is None]
    assert all(u.variant.syscall_wrapper for u in core)  # CO-RE stays w1 only


def test_build_index_table_and_manifest_name_the_skipped_variants(built_project: Path, tmp_path: Path) -> None:
    index = json.loads((built_project / "index.json").read_text())
    assert sorted(u["unit"] for u in index["units"]) == sorted(f"hello/{r}/w1d{d}" for r in RELEASES for d in (0, 1))
    skipped = {s["unit"]: s for s in index["skipped"]}
    assert sorted(skipped) == sorted(f"hello/{r}/w0d{d}" for r in RELEASES for d in (0, 1))
    assert all(s["arch"] == "x86_64" and s["reason"].startswith(f"{WRAPPER_OPTION}=y") for s in skipped.values())

    proc = subprocess.run([sys.executable, "-m", "invoke", "--search-root", str(ROOT), "bundle", "--build-dir",
                           str(built_project), "--dist", str(tmp_path / "dist")],
                          check=False, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp_path / "site")
    data = tmp_path / "site" / "hids_bytecode" / "data"
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["skipped"] == [skipped[u] for u in sorted(skipped)]

    # A host of that kernel without the wrapper (none exists; the facts say so) is refused, and the
    # selection says why for every candidate: no object of its variant was built.
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        from hids_bytecode.errors import NoMatch
        from hids_bytecode.hostinfo import what_if
        from hids_bytecode.kallsyms import WrapperFact
        from hids_bytecode.manifest import load_manifest
        from hids_bytecode.selection import select
    finally:
        sys.path.remove(str(tmp_path / "site"))
    facts = what_if(RELEASES[0], "x86_64")
    facts = facts.replace(wrapper=WrapperFact(False, "", "test: a host without the wrapper", 0, False))
    try:
        select(load_manifest(data), facts, "hello", read=False)
    except NoMatch as exc:
        steps = [s for s in exc.steps if s.stage == "exact" and RELEASES[0] in s.candidate]
        assert steps and all(not s.taken and "syscall_wrapper" in s.reason for s in steps), exc.steps
        wanted = f"hello/{RELEASES[0]}/w0d0"
        assert f"exact: {wanted} was not built: {skipped[wanted]['reason']}" in str(exc)
    else:
        raise AssertionError("a w0 host got an object although no w0 object was built")


def test_rebuild_table_shows_the_skipped_cells(tmp_path: Path) -> None:
    from conftest import fresh_cache, run_build

    cache = fresh_cache(tmp_path)
    assert run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle").returncode == 0
    proc = run_build(TEST_PROJECT / "kernels.yaml", tmp_path / "b", cache, "--no-bundle")
    assert proc.returncode == 0, proc.stderr
    assert "4 cached, 4 skipped, 0 to build" in proc.stderr
    rows = [line for line in proc.stderr.splitlines() if any(r in line for r in RELEASES) and "│" in line]
    assert len(rows) == 2 and all(line.count("1 skipped") == 2 and line.count("1 cached") == 2 for line in rows)
    assert f"skipped 4 unit(s) (w0d0, w0d1 on 2 kernel(s)): {WRAPPER_OPTION}=y" in proc.stderr
