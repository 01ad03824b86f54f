"""Opt-in compilation on the host, with the host's clang and kernel headers, of the stitched source
the wheel ships, using the pipeline's own flags (the manifest entry's `cflags`, docs/DESIGN.md).

The entry's flags name the container's paths (/headers/<n>/usr/src/<tree>, /src/<program>.c, clang's
resource dir); those are rewritten to the host's trees, everything else is kept so the object is
the one the pipeline would have built. Results are cached under /var/cache/hids-bytecode keyed by
(source hash, kernel release, flags, clang version), written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RuntimeCompileError
from .hostinfo import HostFacts
from .integrity import read_verified
from .manifest import Entry

__all__ = ["RuntimePlan", "plan_runtime_compile", "compile_plan", "CACHE_DIR", "CACHE_ENV"]

CACHE_DIR = Path("/var/cache/hids-bytecode")
CACHE_ENV = "HIDS_BYTECODE_CACHE"
_TREE = re.compile(r"/headers/\d+/usr/src/(linux-headers-[^/\s]+)")
_MS_EXTENSIONS_FROM = (6, 19)
_CONTAINER_ONLY = re.compile(r"^-fdebug-prefix-map=/headers/\d+=")


@dataclass(frozen=True)
class RuntimePlan:
    ready: bool
    reason: str
    clang: Path | None = None
    common: Path | None = None
    flavour: Path | None = None
    args: tuple[str, ...] = field(default=())


def _find_clang(preferred_major: str | None) -> Path | None:
    """The pipeline's clang major if installed (same bytes), else the newest clang-N, else clang."""
    versioned = []
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        for candidate in Path(directory or ".").glob("clang-[0-9]*"):
            if candidate.name[6:].isdigit():
                versioned.append((int(candidate.name[6:]), candidate))
    for major, candidate in versioned:
        if str(major) == preferred_major:
            return candidate
    if versioned:
        return max(versioned)[1]
    found = shutil.which("clang")
    return Path(found) if found else None


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


def _debug_path_maps(*trees: Path) -> list[str]:
    """Headers unpacked somewhere other than /usr/src still get /usr/src/... in the object's line
    info, as the pipeline's objects have, so the bytes can match."""
    maps = []
    for tree in trees:
        if tree.parent.name == "src" and tree.parent.parent.name == "usr" and tree.parent.parent.parent != Path("/"):
            maps.append(f"-fdebug-prefix-map={tree.parent.parent.parent}=")
    return sorted(set(maps))


def _rewrite(flags: list[str], common: Path, flavour: Path, clang_include: str, facts: HostFacts,
             source_name: str) -> list[str]:
    def tree(match: re.Match[str]) -> str:
        return str(common if match.group(1).endswith("-common") else flavour)

    out: list[str] = []
    previous = ""
    for flag in flags[:-1]:  # the last flag is the container's source path
        if _CONTAINER_ONLY.match(flag) or flag == "-fms-extensions":
            continue
        if previous == "-isystem" and "/lib/clang/" in flag:
            flag = clang_include
        elif flag.startswith("-DUSE_SYSCALL_WRAPPER="):
            flag = f"-DUSE_SYSCALL_WRAPPER={int(facts.wrapper.wrapper)}"
        out.append(_TREE.sub(tree, flag))
        previous = flag
    if facts.version.tuple[:2] >= _MS_EXTENSIONS_FROM:
        out.append("-fms-extensions")
    return [*out, source_name]


def plan_runtime_compile(entry: Entry, facts: HostFacts, debug: bool | None = None,
                         header_dirs: tuple[Path, ...] = (Path("/usr/src"),)) -> RuntimePlan:
    """Whether this host can compile `entry`'s source, and with which arguments; kernel headers are
    looked for in /lib/modules/<release>/build, then in `header_dirs`."""
    source = entry.source_path
    if source is None or not source.is_file():
        return RuntimePlan(False, f"stitched source {source} is not in the data directory")
    toolchain = re.search(r"version (\d+)", str(entry.raw.get("toolchain", {}).get("clang", "")))
    clang = _find_clang(toolchain.group(1) if toolchain else None)
    if clang is None:
        return RuntimePlan(False, "no clang on PATH (install clang to compile on this host)")
    trees = _header_trees(facts.release, header_dirs)
    if trees is None:
        tried = ", ".join(str(d / f"linux-headers-{facts.release}") for d in header_dirs)
        return RuntimePlan(False, f"no kernel headers for {facts.release} in "
                                  f"/lib/modules/{facts.release}/build or {tried}")
    include = subprocess.run([str(clang), "-print-file-name=include"], capture_output=True, text=True).stdout.strip()
    args = _debug_path_maps(*trees) + _rewrite(entry.cflags, trees[0], trees[1], include, facts, f"{entry.program}.c")
    if debug is not None:
        args = [f"-DDEBUG={int(debug)}" if a.startswith("-DDEBUG=") else a for a in args]
    return RuntimePlan(True, f"compile {source.name} with {clang} against {trees[1]}", clang, trees[0], trees[1],
                       tuple(args))


def _clang_version(clang: Path) -> str:
    return subprocess.run([str(clang), "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def _tool(clang: Path, name: str) -> str:
    sibling = clang.resolve().parent / name
    if sibling.is_file():
        return str(sibling)
    found = shutil.which(name)
    if not found:
        raise RuntimeCompileError(f"{name} not found next to {clang} or on PATH (install llvm)")
    return found


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or CACHE_DIR)


def compile_plan(plan: RuntimePlan, entry: Entry, facts: HostFacts) -> Path:
    """The compiled object's path, from the cache when the same inputs were compiled before."""
    assert plan.ready and plan.clang is not None
    source = entry.source_path
    assert source is not None
    text = read_verified(source, entry.raw["source"]["sha256"], "source")
    clang_version = _clang_version(plan.clang)
    key = hashlib.sha256(json.dumps({
        "source": hashlib.sha256(text).hexdigest(), "release": facts.release,
        "flags": list(plan.args), "clang": clang_version,
    }, sort_keys=True).encode()).hexdigest()
    cache = _cache_dir()
    cached = cache / f"{entry.program}-{key}.o"
    if cached.is_file():
        return cached
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeCompileError(f"cannot create cache {cache}: {exc.strerror}") from None
    with tempfile.TemporaryDirectory(prefix="hids-rc-") as tmp:
        work = Path(tmp)
        (work / f"{entry.program}.c").write_bytes(text)
        # Same debug paths as the pipeline's /src=. mapping, so the bytes can match its object.
        steps = [
            [str(plan.clang), *plan.args, f"-fdebug-prefix-map={work}=.", "-emit-llvm", "-c", "-o", "unit.bc"],
            [_tool(plan.clang, "llc"), "-march=bpf", "-mcpu=v2", "-filetype=obj", "-o", "unit.o", "unit.bc"],
            [_tool(plan.clang, "llvm-strip"), "-g", "unit.o"],
        ]
        for argv in steps:
            proc = subprocess.run(argv, cwd=work, capture_output=True, text=True)
            if proc.returncode != 0:
                errors = [line for line in proc.stderr.splitlines() if "error" in line]
                lines = errors or proc.stderr.splitlines() or ["?"]
                raise RuntimeCompileError(f"runtime compile of {entry.program} failed: {lines[0].strip()}")
        fd, temp = tempfile.mkstemp(dir=cache, prefix=".tmp-", suffix=".o")
        with os.fdopen(fd, "wb") as out:
            out.write((work / "unit.o").read_bytes())
        os.replace(temp, cached)
    return cached
