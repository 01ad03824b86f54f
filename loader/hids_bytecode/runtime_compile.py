"""Opt-in compilation on the host, with the host's clang and kernel headers, of the stitched source
the wheel ships, by the pipeline's own compile recipe (the manifest entry's `recipe`, recipe.py).

The recipe's placeholders are filled with this host's header trees, clang's resource headers, this
kernel's version and the wanted variant; everything else is the pipeline's, so the object is the one
the pipeline would have built. Results are cached under /var/cache/hids-bytecode keyed by
(source hash, kernel release, recipe and its values, clang version), written atomically.

Root runs what this module finds and loads what it caches, so neither may be steered by another
user (docs/THREAT_MODEL.md): compilers come only from fixed root-owned directories, never PATH;
the cache dir must pass safefs.open_private_dir; every hit is re-hashed against the sha256 sidecar
written with it and re-read as a BPF ELF object, else discarded and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from . import safefs
from .elfinfo import ElfError, inventory
from .errors import ManifestError, RuntimeCompileError
from .hostinfo import HostFacts
from .integrity import read_source, source_problem
from .manifest import Entry
from .recipe import RecipeError, Roots, Step, recipe_json, render

__all__ = ["RuntimePlan", "plan_runtime_compile", "compile_plan", "compile_object", "find_compiler",
           "CACHE_DIR", "CACHE_ENV", "TRUSTED_DIRS"]

CACHE_DIR = Path("/var/cache/hids-bytecode")
CACHE_ENV = "HIDS_BYTECODE_CACHE"
# Where compilers may come from, in order; `llvm-*` is expanded newest first. PATH is never used:
# an empty or relative entry would make root run a `clang` from whatever directory it stands in.
TRUSTED_DIRS = ("/usr/lib/llvm-*/bin", "/usr/local/bin", "/usr/bin")
# The environment compilers run with: same reason.
_TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class RuntimePlan:
    ready: bool
    reason: str
    clang: Path | None = None
    recipe: tuple[Step, ...] = ()
    roots: Roots = Roots()  # this host's values; the source's and outputs' paths are set per compile


def _trusted_dirs() -> list[Path]:
    dirs: list[Path] = []
    for pattern in TRUSTED_DIRS:
        found = Path("/").glob(pattern.lstrip("/")) if "*" in pattern else [Path(pattern)]
        dirs += sorted(found, key=lambda d: _major(d.parent.name) or 0, reverse=True)
    return dirs


def _major(name: str) -> int | None:
    """N of `clang-N` or `llvm-N`."""
    head, _, tail = name.rpartition("-")
    return int(tail) if head in ("clang", "llvm") and tail.isdigit() else None


def find_compiler(name: str, major: int | None = None) -> Path | None:
    """The real path of a trusted `name` (of LLVM `major` when given) in TRUSTED_DIRS."""
    for directory in _trusted_dirs():
        llvm = _major(directory.parent.name)
        if major is not None and llvm not in (None, major):
            continue
        names = [name] if llvm is not None else ([f"{name}-{major}"] if major is not None else [name])
        for candidate in names:
            real = safefs.trusted_executable(directory / candidate)
            if real is not None:
                return real
    return None


def _find_clang(preferred_major: str | None) -> Path | None:
    """The pipeline's clang major if installed (same bytes), else the newest clang-N, else clang."""
    majors: set[int] = set()
    for directory in _trusted_dirs():
        names = [directory.parent.name, *(p.name for p in directory.glob("clang-[0-9]*"))]
        majors |= {m for m in map(_major, names) if m is not None}
    order = sorted(majors, reverse=True)
    if preferred_major and preferred_major.isdigit():
        order.insert(0, int(preferred_major))
    for major in order:
        found = find_compiler("clang", major)
        if found is not None:
            return found
    return find_compiler("clang")


def _run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # Nothing of the caller's environment: CPATH, COMPILER_PATH, CCC_OVERRIDE_OPTIONS and the like
    # would choose headers, tools or flags of the compile as surely as PATH would.
    return subprocess.run(argv, capture_output=True, text=True, env={"PATH": _TOOL_PATH, "LC_ALL": "C"}, cwd=cwd)


def _header_trees(release: str, header_dirs: tuple[Path, ...]) -> tuple[Path, Path] | None:
    """(common, flavour) trees of the running kernel; a single tree serves as both off Debian."""
    flavour = None
    for candidate in (Path(f"/lib/modules/{release}/build"), *(d / f"linux-headers-{release}" for d in header_dirs)):
        if (candidate / "include").is_dir():
            flavour = candidate.resolve()
            break
    if flavour is None:
        return None
    commons = [p for d in {flavour.parent, *header_dirs} for p in d.glob("linux-headers-*-common")
               if release.startswith(p.name[len("linux-headers-"):-len("-common")] + "-")]
    common = max(commons, key=lambda p: len(p.name)) if commons else flavour
    return common, flavour


def _unpacked_roots(*trees: Path) -> tuple[str, ...]:
    """Where header trees unpacked somewhere other than /usr/src were unpacked, so that their line
    info still reads /usr/src/..., as the pipeline's objects' does, and the bytes can match."""
    roots = {str(t.parent.parent.parent) for t in trees
             if t.parent.name == "src" and t.parent.parent.name == "usr" and t.parent.parent.parent != Path("/")}
    return tuple(sorted(roots))


def _work_roots(roots: Roots, work: Path, program: str) -> Roots:
    return replace(roots, source=str(work / f"{program}.c"), source_dir=str(work), bitcode=str(work / "unit.bc"),
                   object=str(work / "unit.o"))


def plan_runtime_compile(entry: Entry, facts: HostFacts, debug: bool | None = None,
                         header_dirs: tuple[Path, ...] = (Path("/usr/src"),)) -> RuntimePlan:
    """Whether this host can compile `entry`'s source by its recipe, and with which values; kernel
    headers are looked for in /lib/modules/<release>/build, then in `header_dirs`."""
    problem = source_problem(entry)
    if problem:
        return RuntimePlan(False, problem)
    try:
        recipe = entry.recipe
    except ManifestError as exc:
        return RuntimePlan(False, str(exc))
    if recipe is None:
        return RuntimePlan(False, f"{entry.unit} carries no compile recipe (built before recipes existed)")
    toolchain = re.search(r"version (\d+)", str(entry.raw.get("toolchain", {}).get("clang", "")))
    clang = _find_clang(toolchain.group(1) if toolchain else None)
    if clang is None:
        return RuntimePlan(False, "no root-owned clang in " + ", ".join(TRUSTED_DIRS)
                                  + " (install clang to compile on this host; PATH is not searched)")
    trees = _header_trees(facts.release, header_dirs)
    if trees is None:
        tried = ", ".join(str(d / f"linux-headers-{facts.release}") for d in header_dirs)
        return RuntimePlan(False, f"no kernel headers for {facts.release} in "
                                  f"/lib/modules/{facts.release}/build or {tried}")
    include = _run([str(clang), "-print-file-name=include"]).stdout.strip()
    roots = Roots(common=str(trees[0]), flavour=str(trees[1]), header_roots=_unpacked_roots(*trees),
                  clang_include=include, wrapper=facts.wrapper.wrapper, debug=entry.debug if debug is None else debug,
                  kernel=facts.version.tuple)
    try:  # a recipe needing a value this host has none for is refused now, not halfway through
        render(recipe, _work_roots(roots, Path("/"), entry.program))
    except RecipeError as exc:
        return RuntimePlan(False, f"{entry.unit}'s compile recipe cannot run here: {exc}")
    return RuntimePlan(True, f"compile {entry.raw['source']['path']} with {clang} against {trees[1]}", clang,
                       recipe, roots)


def _clang_version(clang: Path) -> str:
    return (_run([str(clang), "--version"]).stdout.splitlines() or ["?"])[0]


def _tool(clang: Path, name: str) -> str:
    """`name` from clang's own LLVM, else from TRUSTED_DIRS; never from PATH."""
    # clang's own directory (resolved: /usr/bin/clang-19 is a link into /usr/lib/llvm-19/bin), whose
    # llc reads the bitcode of that clang; /usr/bin/llc may belong to an older LLVM.
    found = safefs.trusted_executable(Path(os.path.realpath(clang)).parent / name) or find_compiler(name)
    if found is None:
        raise RuntimeCompileError(f"no root-owned {name} next to {clang} or in {', '.join(TRUSTED_DIRS)} "
                                  f"(install llvm)")
    return str(found)


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or CACHE_DIR)


def _open_cache(cache: Path) -> int:
    try:
        return safefs.open_private_dir(cache, create=True)
    except safefs.Unsafe as exc:
        raise RuntimeCompileError(f"refusing runtime-compile cache {cache}: {exc} (it must be reached through "
                                  f"no symlink, owned by root, writable by no one else)") from None
    except OSError as exc:
        raise RuntimeCompileError(f"cannot create cache {cache}: {exc.strerror or exc}") from None


def _discard(dir_fd: int, name: str, shown: Path, reason: str) -> None:
    print(f"hids-bytecode: cached {shown} {reason}; discarding it and compiling again", file=sys.stderr)
    for victim in (name, name + ".sha256"):
        try:
            os.unlink(victim, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def _cache_hit(dir_fd: int, name: str, shown: Path) -> bytes | None:
    """The cached object's bytes if it is ours, matches its sidecar and is a BPF object."""
    try:
        data = safefs.read_fd(safefs.open_private_file(dir_fd, name, str(shown)))
    except FileNotFoundError:
        return None
    except (safefs.Unsafe, OSError) as exc:
        _discard(dir_fd, name, shown, f"is unusable ({exc})")
        return None
    try:
        recorded = safefs.read_fd(safefs.open_private_file(dir_fd, name + ".sha256", f"{shown}.sha256"))
    except (safefs.Unsafe, OSError) as exc:
        _discard(dir_fd, name, shown, f"has no usable sha256 sidecar ({exc})")
        return None
    actual = hashlib.sha256(data).hexdigest()
    if recorded.strip().decode("ascii", "replace") != actual:
        _discard(dir_fd, name, shown, f"has sha256 {actual[:16]}..., not the one recorded when it was written")
        return None
    try:
        inventory(data)
    except ElfError as exc:
        _discard(dir_fd, name, shown, f"is not a BPF object ({exc})")
        return None
    return data


def _write_private(dir_fd: int, name: str, data: bytes) -> None:
    """`name` in the cache, all or nothing: written to a fresh 0600 file, synced, then renamed."""
    temp = f".tmp-{secrets.token_hex(8)}-{name}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        os.unlink(temp, dir_fd=dir_fd)
        raise


def _compile(plan: RuntimePlan, entry: Entry, text: bytes) -> bytes:
    assert plan.clang is not None
    tools = {"clang": str(plan.clang), "llc": _tool(plan.clang, "llc"), "llvm-strip": _tool(plan.clang, "llvm-strip")}
    with tempfile.TemporaryDirectory(prefix="hids-rc-") as tmp:
        roots = _work_roots(plan.roots, Path(tmp), entry.program)
        Path(str(roots.source)).write_bytes(text)
        for argv in render(plan.recipe, roots):
            proc = _run([tools[argv[0]], *argv[1:]], cwd=Path(tmp))
            if proc.returncode != 0:
                errors = [line for line in proc.stderr.splitlines() if "error" in line]
                lines = errors or proc.stderr.splitlines() or ["?"]
                raise RuntimeCompileError(f"runtime compile of {entry.program} failed: {lines[0].strip()}")
        return Path(str(roots.object)).read_bytes()


def compile_object(plan: RuntimePlan, entry: Entry, facts: HostFacts) -> tuple[bytes, Path]:
    """The compiled object's checked bytes and cache path; from the cache when the same inputs were
    compiled before and the cached file passes its checks."""
    assert plan.ready and plan.clang is not None
    if safefs.trusted_executable(plan.clang) is None:
        raise RuntimeCompileError(f"{plan.clang} is not a root-owned compiler only root can change; refusing it")
    if not _SAFE_NAME.fullmatch(entry.program):
        raise RuntimeCompileError(f"program name {entry.program!r} cannot name a cache file")
    text = read_source(entry)
    key = hashlib.sha256(json.dumps({
        "source": hashlib.sha256(text).hexdigest(), "release": facts.release,
        "recipe": recipe_json(plan.recipe), "roots": plan.roots.as_dict(), "clang": _clang_version(plan.clang),
    }, sort_keys=True).encode()).hexdigest()
    cache = _cache_dir()
    name = f"{entry.program}-{key}.o"
    dir_fd = _open_cache(cache)
    try:
        data = _cache_hit(dir_fd, name, cache / name)
        if data is None:
            data = _compile(plan, entry, text)
            # Sidecar first: a crash between the renames leaves a mismatch, which is recompiled.
            _write_private(dir_fd, name + ".sha256", hashlib.sha256(data).hexdigest().encode() + b"\n")
            _write_private(dir_fd, name, data)
    finally:
        os.close(dir_fd)
    return data, cache / name


def compile_plan(plan: RuntimePlan, entry: Entry, facts: HostFacts) -> Path:
    """The compiled object's cache path (compile_object also returns the checked bytes)."""
    return compile_object(plan, entry, facts)[1]
