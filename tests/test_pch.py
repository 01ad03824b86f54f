"""Precompiled headers: the objects a kernel's units get through a shared PCH are byte-identical
to those compiled from the source alone (the test project, and one real bpf/ program on a real
Debian kernel), and a PCH that read an excluded variant macro is not used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TEST_PROJECT, copy_project, fresh_cache

from hidsbuild.compile import Job, _plan_groups, _write_group
from hidsbuild.errors import UnitsFailed
from hidsbuild.kernels import load_matrix
from hidsbuild.pch import prologue, shared_header
from hidsbuild.pipeline import BuildOptions, BuildResult, build_all
from hidsbuild.stitch import stitch
from hidsbuild.units import PCH_EXCLUDED_MACROS, compile_recipe, container_roots, enumerate_units, pch_args

pytestmark = pytest.mark.integration


def _stitched(name: str) -> str:
    return stitch(name, ROOT / "bpf" / f"{name}.bpf.c", ROOT, [ROOT / "bpf" / "include"]).text


# --- fast tier: no docker ---------------------------------------------------------------

def test_every_real_program_shares_one_prologue_ending_before_the_first_declaration() -> None:
    heads = {name: prologue(_stitched(name)) for name in ("process", "file", "network", "kernel")}
    assert len(set(heads.values())) == 1, "the four programs would need four PCHs per kernel"
    head = heads["file"]
    assert "#include <net/sock.h>" in head and "#line" not in head and "/*" not in head
    assert "SEC(" not in head and "bpf_map_lookup_elem" not in head  # hids_helpers.h holds code: not shared
    assert head.splitlines()[-1] == "#endif"


def test_prologue_rules() -> None:
    assert prologue("int x;\n#include <a.h>\n") == ""  # code first: nothing to share
    assert prologue("#define A 1\nint x;\n") == ""  # nothing included: not worth a PCH
    text = '/* c */\n#line 1 "x"\n#include "a//b.h" // tail\n#ifndef G\n#define G \\\n  2\n#if X\nint y;\n'
    assert prologue(text) == '#include "a//b.h"\n'  # cut where every conditional is closed


def test_one_header_serves_every_program_and_variant_of_a_kernel() -> None:
    args = ["-I/h", "-DUSE_SYSCALL_WRAPPER=1", "-DDEBUG=0", "-O2"]
    assert pch_args(args) == ["-I/h", "-O2"]
    a = shared_header(_stitched("file"), pch_args(args), PCH_EXCLUDED_MACROS)
    b = shared_header(_stitched("network"), pch_args(["-I/h", "-DUSE_SYSCALL_WRAPPER=0", "-DDEBUG=1", "-O2"]),
                      PCH_EXCLUDED_MACROS)
    assert a is not None and b is not None and a.id == b.id
    lines = a.text.splitlines()
    assert lines[:2] == ["#define USE_SYSCALL_WRAPPER 0", "#define DEBUG 0"]
    assert lines[-2:] == ["#undef USE_SYSCALL_WRAPPER", "#undef DEBUG"]
    c = shared_header(_stitched("file"), pch_args(["-I/other", *args[1:]]), PCH_EXCLUDED_MACROS)
    assert c is not None and c.id != a.id


def test_a_kernel_x_variant_programs_form_one_group_with_one_clang_and_one_strip(tmp_path: Path) -> None:
    matrix = load_matrix(ROOT / "kernels.yaml")
    units = [u for u in enumerate_units(matrix) if u.kernel is None and u.arch == "x86_64"]
    jobs = [Job(u, compile_recipe(u), container_roots(u, None, 19), "key") for u in units]
    groups = _plan_groups(jobs, {})
    assert sorted(sorted(jobs[i].unit.program.name for i in g) for g in groups) == \
        [["file", "kernel", "network", "process"]] * 2  # one per debug variant
    assert all(len({jobs[i].unit.variant for i in g}) == 1 for g in groups)
    (tmp_path / "u0000").mkdir()
    (tmp_path / "u0001").mkdir()
    pair = [("u0000", jobs[groups[0][0]]), ("u0001", jobs[groups[0][1]])]
    _write_group(tmp_path, "g0000", pair, None)
    steps = (tmp_path / "g0000" / "steps").read_text().splitlines()
    assert [s.split()[0] for s in steps] == ["clang", "llc", "llc", "llvm-strip"]
    assert all(str(job.roots.source) in steps[0] for _, job in pair) and " -o " not in steps[0]
    assert steps[-1].endswith("-g /out/u0000/unit.o /out/u0001/unit.o")
    assert (tmp_path / "g0000" / "owners").read_text() == "u0000 u0001\nu0000\nu0001\nu0000 u0001\n"
    assert (tmp_path / "u0001" / "group").read_text() == "g0000"


# --- docker: real compiles ----------------------------------------------------------------

def _build(matrix: Path, tmp: Path, pch: bool) -> tuple[dict[str, str], BuildResult]:
    tag = "pch" if pch else "plain"
    result = build_all(BuildOptions(matrix, tmp / f"build-{tag}", fresh_cache(tmp / tag), pch=pch))
    index = json.loads((tmp / f"build-{tag}" / "index.json").read_text())
    return {u["unit"]: u["sha256"] for u in index["units"]}, result


def _assert_identical(matrix: Path, tmp: Path) -> None:
    with_pch, result = _build(matrix, tmp, pch=True)
    plain, plain_result = _build(matrix, tmp, pch=False)
    built = [o for o in result.outcomes if o.status == "built"]
    assert built and all(o.pch for o in built), "every unit must have been compiled through the PCH"
    # Each step of the recipe reports the CPU its tool used, and each unit its share of the
    # shared header's precompile (the bench's profile).
    assert all(set(o.step_cpu) == {"pch", "clang", "llc", "llvm-strip"} and o.step_cpu["clang"] > 0 for o in built)
    assert all(o.step_cpu["pch"] > 0 for o in built)
    assert all(ns > 0 for ns in result.pch_ns.values())
    assert not any(o.pch for o in plain_result.outcomes) and not any(plain_result.pch_ns.values())
    assert with_pch == plain


def test_test_project_objects_are_identical_with_and_without_pch(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    _assert_identical(project / "kernels.yaml", tmp_path)


def test_real_program_objects_are_identical_with_and_without_pch(tmp_path: Path) -> None:
    """network x 4 variants on 6.1.0-50 (headers shared with the other tests): two PCHs
    (DEBUG=0/1), each serving both syscall-wrapper variants."""
    project = tmp_path / "real"
    shutil.copytree(ROOT / "bpf", project / "bpf")
    doc = yaml.safe_load((TEST_PROJECT / "kernels.yaml").read_text())
    doc["programs"] = {"network": {"source": "bpf/network.bpf.c"}}
    doc["kernels"] = [k for k in doc["kernels"] if k["release"] == "6.1.0-50-cloud-amd64"]
    (project / "kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    _assert_identical(project / "kernels.yaml", tmp_path)


def _add_program(project: Path, name: str, source: str) -> None:
    entry = f"programs:\n  {name}: {{source: bpf/{name}.bpf.c}}\n"
    (project / "kernels.yaml").write_text((project / "kernels.yaml").read_text().replace("programs:\n", entry, 1))
    (project / "bpf" / f"{name}.bpf.c").write_text(source)


def test_programs_of_a_kernel_and_variant_compiled_in_one_group_give_the_same_objects(tmp_path: Path) -> None:
    """Two programs per kernel x variant: one clang and one llvm-strip per group, the objects
    byte-identical to each unit compiled alone, and each unit's profile its share of the group's."""
    project = copy_project(tmp_path / "p")
    hello = (project / "bpf" / "hello.bpf.c").read_text()
    _add_program(project, "other", hello.replace("count_exec", "other_exec"))
    with_groups, result = _build(project / "kernels.yaml", tmp_path, pch=True)
    alone, plain_result = _build(project / "kernels.yaml", tmp_path, pch=False)
    built = [o for o in result.outcomes if o.status == "built"]
    assert len(built) == 8 and all(o.pch for o in built)
    # The test program warns (an unused variable) without DEBUG: those groups said something, so
    # their units were compiled again one by one and each keeps its own warning.
    for o in built:
        assert o.object is not None
        assert o.grouped == (o.job.unit.variant.debug and not o.object.meta["warnings"]), o.job.unit.id
    assert all(o.compile_ns > 0 and o.step_cpu["clang"] > 0 and o.step_cpu["llvm-strip"] >= 0 for o in built)
    assert not any(o.grouped for o in plain_result.outcomes)
    assert with_groups == alone


def test_a_group_with_a_failing_member_compiles_unit_by_unit(tmp_path: Path) -> None:
    """The broken program's error is its own and the good program of its group still builds."""
    project = copy_project(tmp_path / "p")
    _add_program(project, "zbroken", (project / "bpf" / "broken.bpf.c").read_text())
    doc = yaml.safe_load((project / "kernels.yaml").read_text())
    doc["kernels"] = doc["kernels"][:1]
    (project / "kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(UnitsFailed):
        build_all(BuildOptions(project / "kernels.yaml", tmp_path / "build", fresh_cache(tmp_path)))
    index = json.loads((tmp_path / "build" / "index.json").read_text())
    assert [u["program"] for u in index["units"]] == ["hello", "hello"]
    assert all("undeclared_identifier" in f["error"] and f["unit"].startswith("zbroken/") for f in index["failures"])
    assert len(index["failures"]) == 2


def test_pch_that_reads_an_excluded_variant_macro_is_not_used(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "p")
    source = project / "bpf" / "hello.bpf.c"
    source.write_text("#if USE_SYSCALL_WRAPPER\n#endif\n" + source.read_text())
    doc = yaml.safe_load((project / "kernels.yaml").read_text())
    doc["kernels"] = doc["kernels"][:1]
    (project / "kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    result = build_all(BuildOptions(project / "kernels.yaml", tmp_path / "build", fresh_cache(tmp_path)))
    assert result.count("built") == 2 and not any(o.pch for o in result.outcomes)
