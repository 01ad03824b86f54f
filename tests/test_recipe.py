"""Fast tier (no docker, no root, no network): the compile recipe (loader/hids_bytecode/recipe.py).

The container's argv for fixed units is the argv HEAD ae2ab82 ran (recorded by running that
commit's code: tests/data/recipe_argv_ae2ab82.json), so the objects cannot have changed; the
recipe survives the manifest's JSON; a host renders it with its own trees and kernel; anything
outside the closed set of tools and placeholders is refused with a message naming it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT
from hids_bytecode.errors import ManifestError
from hids_bytecode.manifest import Entry
from hids_bytecode.recipe import RecipeError, Roots, Step, parse_recipe, recipe_json, render

from hidsbuild.kernels import load_matrix
from hidsbuild.units import Unit, cache_key, compile_recipe, container_roots, enumerate_units

FIXTURE = ROOT / "tests" / "data" / "recipe_argv_ae2ab82.json"
MATRIX = load_matrix(ROOT / "kernels.yaml")


@dataclass(frozen=True)
class _Trees:
    """The layout fields of headers.KernelHeaders that container_roots reads (the packages
    themselves are not needed to say where they are mounted)."""

    packages: tuple[Path, ...]
    common: str
    flavour: str


def _unit(program: str, release: str | None, variant: str, arch: str, cflags: tuple[str, ...] = ()) -> Unit:
    prog = next(p for p in MATRIX.programs if p.name == program)
    var = next(v for v in prog.variants if v.id == variant)
    if release is None:
        return Unit(prog, arch, var)
    kernel = dataclasses.replace(next(k for k in MATRIX.kernels if k.release == release), cflags=cflags)
    return Unit(prog, kernel.arch, var, kernel)


def _container_argv(recorded: dict) -> list[list[str]]:
    unit = _unit(recorded["program"], recorded["release"], recorded["variant"], recorded["arch"],
                 tuple(recorded["kernel_cflags"]))
    trees = recorded["headers"] and _Trees(tuple(Path(f"/p{i}") for i in range(recorded["headers"]["packages"])),
                                           recorded["headers"]["common"], recorded["headers"]["flavour"])
    roots = container_roots(unit, trees, recorded["clang_major"])  # type: ignore[arg-type]
    steps = parse_recipe(json.loads(json.dumps(recipe_json(compile_recipe(unit)))))  # as the manifest carries it
    return render(steps, dataclasses.replace(roots, bitcode="/out/u0000/unit.bc", object="/out/u0000/unit.o.tmp"))


@pytest.mark.parametrize("recorded", json.loads(FIXTURE.read_text())["units"],
                         ids=lambda r: f"{r['program']}/{r['release'] or 'core-' + r['arch']}/{r['variant']}")
def test_container_argv_is_the_one_the_previous_compile_ran(recorded: dict) -> None:
    expected = [list(argv) for argv in recorded["argv"]]
    if recorded["release"] and recorded["arch"] == "x86_64":
        # The one change: every arch's kernel compile names its clang target (arches.py) where
        # only arm64's did; x86_64-linux-gnu is clang's default there, and the full build's 256
        # objects kept their sha256 (docs/DESIGN.md, "Compile recipe").
        expected[0].insert(4, "--target=x86_64-linux-gnu")
    assert _container_argv(recorded) == expected


def test_every_unit_of_the_matrix_has_a_recipe_that_survives_the_manifest() -> None:
    units = enumerate_units(MATRIX)
    assert {u.kind for u in units} == {"exact", "core"}
    for unit in units:
        steps = compile_recipe(unit)
        assert [s.tool for s in steps] == ["clang", "llc", "llvm-strip"]
        assert parse_recipe(json.loads(json.dumps(recipe_json(steps)))) == steps


def _exact_recipe() -> tuple[Step, ...]:
    return compile_recipe(_unit("file", "6.1.0-50-cloud-amd64", "w1d0", "x86_64"))


def _host(**values: object) -> Roots:
    base = Roots(source="/tmp/w/file.c", source_dir="/tmp/w", common="/usr/src/linux-headers-6.19.1-common",
                 flavour="/usr/src/linux-headers-6.19.1-amd64", clang_include="/usr/lib/llvm-19/lib/clang/19/include",
                 bitcode="/tmp/w/unit.bc", object="/tmp/w/unit.o", wrapper=False, debug=True, kernel=(6, 19, 1))
    return dataclasses.replace(base, **values)  # type: ignore[arg-type]


def test_a_host_renders_the_recipe_with_its_own_trees_kernel_and_variant() -> None:
    clang, llc, strip = render(_exact_recipe(), _host())
    assert not any("/headers" in a or a.startswith("/src") or "=/src" in a for a in clang)
    assert "-I/usr/src/linux-headers-6.19.1-common/include" in clang
    assert "-I/usr/src/linux-headers-6.19.1-amd64/include/generated/uapi" in clang
    assert {"-DUSE_SYSCALL_WRAPPER=0", "-DDEBUG=1", "-fms-extensions", "-fdebug-prefix-map=/tmp/w=."} <= set(clang)
    assert clang[-5:] == ["/tmp/w/file.c", "-emit-llvm", "-c", "-o", "/tmp/w/unit.bc"]
    assert not any(a.startswith("-fdebug-prefix-map=") and a.endswith("=") for a in clang)  # trees in /usr/src
    assert llc == ["llc", "-march=bpf", "-mcpu=v2", "-filetype=obj", "-o", "/tmp/w/unit.o", "/tmp/w/unit.bc"]
    assert strip == ["llvm-strip", "-g", "/tmp/w/unit.o"]
    older = render(_exact_recipe(), _host(kernel=(6, 18, 9)))[0]
    assert "-fms-extensions" not in older and len(older) == len(clang) - 1
    unpacked = render(_exact_recipe(), _host(header_roots=("/opt/h/a", "/opt/h/b")))[0]
    maps = [a for a in unpacked if a.startswith("-fdebug-prefix-map=/opt/h/")]
    assert maps == ["-fdebug-prefix-map=/opt/h/a=", "-fdebug-prefix-map=/opt/h/b="]
    assert unpacked.index(maps[0]) == clang.index("-fms-extensions")  # where the container's maps stand


def test_a_value_the_host_lacks_is_refused_by_name() -> None:
    core = compile_recipe(_unit("file", None, "w1d0", "x86_64"))
    with pytest.raises(RecipeError, match=r"\{btf\} has no value"):
        render(core, _host())
    with pytest.raises(RecipeError, match="kernel version"):
        render(_exact_recipe(), _host(kernel=None))


def test_braces_of_kernels_yaml_flags_stay_literal() -> None:
    unit = _unit("file", "6.1.0-50-cloud-amd64", "w1d0", "x86_64", ("-DNAME={x}", "-DB=}{"))
    clang = render(compile_recipe(unit), _host())[0]
    assert clang[-7:-5] == ["-DNAME={x}", "-DB=}{"]


@pytest.mark.parametrize(("doc", "message"), [
    ([], "non-empty list"),
    ({"tool": "clang", "args": []}, "non-empty list"),
    ([{"tool": "clang"}], "exactly tool and args"),
    ([{"tool": "clang", "args": [], "env": {}}], "exactly tool and args"),
    ([{"tool": "sh", "args": ["-c", "id"]}], "unknown tool 'sh'"),
    ([{"tool": "/usr/bin/clang", "args": []}], "unknown tool"),
    ([{"tool": "clang", "args": "-O2"}], "must be a string"),
    ([{"tool": "clang", "args": ["-O2", 2]}], r"must be a string, not 2"),
    ([{"tool": "clang", "args": ["-I{home}/include"]}], r"unknown placeholder \{home\}"),
    ([{"tool": "clang", "args": ["-I{common"]}], "lone '{'"),
    ([{"tool": "clang", "args": ["-DX=}"]}], "lone '}'"),
    ([{"tool": "clang", "args": ["-fx{since:6.19}"]}], "must open the argument"),
    ([{"tool": "clang", "args": ["{since:6}-fx"]}], "must open the argument"),
    ([{"tool": "llc", "args": []}, {"tool": "llvm-strip", "args": [None]}], r"step 1 \(llvm-strip\)"),
])
def test_malformed_recipes_are_refused_with_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        parse_recipe(doc)


def test_the_manifest_names_the_unit_of_a_malformed_recipe() -> None:
    entry = Entry({"unit": "file/6.1.0-50-cloud-amd64/w1d0", "recipe": [{"tool": "sh", "args": []}]}, Path("/"))
    with pytest.raises(ManifestError, match=r"file/6.1.0-50-cloud-amd64/w1d0: malformed compile recipe: .*'sh'"):
        _ = entry.recipe
    assert Entry({"unit": "old"}, Path("/")).recipe is None
    good = Entry({"unit": "u", "recipe": recipe_json(_exact_recipe())}, Path("/"))
    assert good.recipe == _exact_recipe()


def test_the_cache_key_covers_the_recipe_and_its_values_not_the_batch_paths() -> None:
    unit = _unit("file", "6.1.0-50-cloud-amd64", "w1d0", "x86_64")
    roots = container_roots(unit, _Trees((Path("/a"), Path("/b")), "0/usr/src/c", "1/usr/src/f"), 19)  # type: ignore[arg-type]
    steps = compile_recipe(unit)

    def key(s: tuple[Step, ...] = steps, r: Roots = roots) -> str:
        return cache_key(unit, s, r, "src", "hdr", "tc")

    assert key() == key(r=dataclasses.replace(roots, bitcode="/out/u0007/unit.bc", object="/out/u0007/unit.o"))
    assert key() != key(r=dataclasses.replace(roots, debug=True))
    assert key() != key(r=dataclasses.replace(roots, clang_include="/usr/lib/llvm-20/lib/clang/20/include"))
    assert key() != key(s=(dataclasses.replace(steps[0], args=(*steps[0].args, "-O3")), *steps[1:]))
    assert key() != key(s=(steps[0], Step("llc", ("-march=bpf", "-mcpu=v3")), steps[2]))
