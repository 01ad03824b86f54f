"""Where a compile runs: a batch of units (one kernel's) inside one toolchain container.

Each unit's compile recipe is rendered here with the container's paths into `steps`, one
shell-quoted argv per line, which templates/compile_unit.sh runs for every unit with
`xargs -P <cores>`, so a kernel's units share one container start and every core; first it
precompiles the headers that two or more of the batch's units share (hidsbuild/pch.py), once
each. Units whose clang step differs only in the source (a kernel x variant's programs) run as
one group: one clang process for all their sources, then each unit's llc, then one llvm-strip for
all their objects, which saves two tool start-ups per unit (same objects). The host watches
the bind-mounted output directory and validates and caches each object as soon as its unit
finishes; a unit whose object is cut or invalid fails and leaves nothing in the cache.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hids_bytecode.recipe import Roots, Step, render

from . import containers
from .cache import CachedObject, ObjectCache
from .owners import make_scratch
from .pch import SharedHeader, shared_header
from .toolchain import ToolchainImage
from .units import PCH_EXCLUDED_MACROS, Unit, pch_args, rendered_flags

if TYPE_CHECKING:  # docker and pyelftools (~0.25 s of imports) only when a unit compiles: not in a no-op build
    import docker

__all__ = ["Job", "Outcome", "run_batch"]

_POLL_SECONDS = 0.1
_DOCKER_POLL_SECONDS = 2.0
_TIMES = re.compile(r"(\d+)m([\d.]+)s")
log = logging.getLogger("hidsbuild")


@dataclass(frozen=True)
class Job:
    unit: Unit
    recipe: tuple[Step, ...]
    roots: Roots  # the container's paths and the unit's variant; bitcode and object are set per batch
    key: str

    @property
    def flags(self) -> list[str]:
        return rendered_flags(self.unit, self.roots)


@dataclass
class Outcome:
    job: Job
    status: str  # "built" | "cached" | "failed"
    compile_ns: int = 0
    error: str = ""
    object: CachedObject | None = field(default=None, repr=False)
    pch: bool = False  # compiled with a precompiled header
    grouped: bool = False  # its clang (and llvm-strip) ran once for its whole group
    step_cpu: dict[str, float] = field(default_factory=dict)  # tool (or "pch": a share) -> CPU seconds


def _finish(job: Job, out: Path, image: ToolchainImage, cache: ObjectCache) -> Outcome:
    stderr = (out / "stderr").read_text(errors="replace") if (out / "stderr").exists() else ""
    try:
        status_text, ns_text, how = (out / "result").read_text().split()
        compile_ns = int(ns_text)
    except ValueError:
        return Outcome(job, "failed", 0, f"the unit's result record is malformed: {stderr.strip()}")
    if status_text != "0":
        return Outcome(job, "failed", compile_ns, stderr.strip() or f"compiler exited with status {status_text}")
    try:
        data = (out / "unit.o").read_bytes()
    except OSError:
        return Outcome(job, "failed", compile_ns, "the compiler reported success but left no object")
    from .validate import InvalidObject, validate_object

    try:
        info = validate_object(data)
    except InvalidObject as exc:
        return Outcome(job, "failed", compile_ns, f"validation: {exc}")
    meta = {
        "unit": job.unit.id,
        "programs": list(info.programs),
        "maps": list(info.maps),
        "license": info.license,
        "clang": image.clang_version,
        "toolchain": image.toolchain_id,
        "compile_ns": compile_ns,
        "warnings": stderr.strip(),
    }
    pch = how.endswith("pch")
    if how.startswith("grouped"):
        compile_ns, step_cpu = _group_share(out)
        meta["compile_ns"] = compile_ns
    else:
        step_cpu = _step_cpu(job, out)
    if pch:
        step_cpu.update(_pch_share(out))
    return Outcome(job, "built", compile_ns, object=cache.put(job.key, data, meta), pch=pch,
                   grouped=how.startswith("grouped"), step_cpu=step_cpu)


def _children_cpu(path: Path) -> list[float]:
    """The children's CPU seconds of each `times` output in `path` ("0m0.01s 0m0.00s" for the
    shell, then the same for its children); empty if there is none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [sum(int(m) * 60 + float(s) for m, s in _TIMES.findall(child)) for child in lines[1::2]]


def _step_cpu(job: Job, out: Path) -> dict[str, float]:
    """CPU seconds per tool of the unit's steps (compile_unit.sh notes `times` before and after
    each)."""
    seen = _children_cpu(out / "cpu")
    if len(seen) != len(job.recipe) + 1:
        return {}
    spent: dict[str, float] = {}
    for step, before, after in zip(job.recipe, seen[:-1], seen[1:], strict=True):
        spent[step.tool] = spent.get(step.tool, 0.0) + after - before
    return spent


def _pch_share(out: Path) -> dict[str, float]:
    """The unit's share of its shared header's precompile, in CPU seconds."""
    header = out.parent / "pch" / (out / "pch").read_text()
    cpu = _children_cpu(header / "cpu")
    return {"pch": cpu[0] / int((header / "users").read_text())} if cpu else {}


def _group_share(out: Path) -> tuple[int, dict[str, float]]:
    """A grouped unit's compile time (ns) and CPU seconds per tool: each step of its group split
    evenly among the units it served (compile_unit.sh notes the clock and `times` after each)."""
    group = out.parent / (out / "group").read_text()
    clock = [int(line) for line in (group / "clock").read_text().split()]
    cpu = _children_cpu(group / "cpu")
    owners = [line.split() for line in (group / "owners").read_text().splitlines()]
    tools = (group / "tools").read_text().split()
    if not (len(clock) == len(cpu) == len(owners) + 1 == len(tools) + 1):
        return 0, {}
    ns, spent = 0, dict[str, float]()
    for i, (tool, served) in enumerate(zip(tools, owners, strict=True)):
        if out.name in served:
            ns += (clock[i + 1] - clock[i]) // len(served)
            spent[tool] = spent.get(tool, 0.0) + (cpu[i + 1] - cpu[i]) / len(served)
    return ns, spent


def _shared_headers(jobs: list[Job], sources: Path) -> dict[int, SharedHeader]:
    """Job index -> the precompiled header it uses, for headers two or more jobs share."""
    texts = {job.unit.program.name: (sources / f"{job.unit.program.name}.c").read_text() for job in jobs}
    headers = {i: shared_header(texts[job.unit.program.name], pch_args(job.flags), PCH_EXCLUDED_MACROS)
               for i, job in enumerate(jobs)}
    users = Counter(h.id for h in headers.values() if h)
    return {i: h for i, h in headers.items() if h and users[h.id] > 1}


def _write_headers(workdir: Path, headers: dict[int, SharedHeader]) -> None:
    users = Counter(h.id for h in headers.values())
    for header in {h.id: h for h in headers.values()}.values():
        path = workdir / "pch" / header.id
        path.mkdir(parents=True)
        (path / "users").write_text(f"{users[header.id]}\n")
        (path / "header.h").write_text(header.text)
        (path / "args").write_text("\n".join(header.args) + "\n")
        (path / "excluded").write_text("\n".join(PCH_EXCLUDED_MACROS) + "\n")


def _steps_text(argvs: list[list[str]]) -> str:
    """A steps file: one shell-quoted command per line, as compile_unit.sh reads it."""
    return "".join(shlex.join(argv) + "\n" for argv in argvs)


def _reading_pch(argvs: list[list[str]], header: SharedHeader) -> list[list[str]]:
    """`argvs` with their first step, clang, reading the precompiled `header` first (compile_unit.sh
    --pch writes it to /tmp/pch/<id>.pch)."""
    assert argvs[0][0] == "clang"
    return [[argvs[0][0], "-include-pch", f"/tmp/pch/{header.id}.pch", *argvs[0][1:]], *argvs[1:]]


def _write_steps(unit_dir: Path, job: Job, header: SharedHeader | None) -> None:
    """The unit's recipe as the container runs it: `steps`, and with a shared header `steps.pch`,
    the same with clang reading that header first."""
    out = f"/out/{unit_dir.name}"
    argv = render(job.recipe, replace(job.roots, bitcode=f"{out}/unit.bc", object=f"{out}/unit.o"))
    (unit_dir / "steps").write_text(_steps_text(argv))
    if header is not None:
        (unit_dir / "pch").write_text(header.id)
        (unit_dir / "steps.pch").write_text(_steps_text(_reading_pch(argv, header)))


def _grouped_clang(argv: list[str], source: str, bitcode: str) -> list[str] | None:
    """`argv` (a clang step) without its source and `-o bitcode`, the source's place marked by
    an empty string; None if it does not name each exactly once."""
    if argv.count(source) != 1 or argv.count(bitcode) != 1 or argv[argv.index(bitcode) - 1] != "-o":
        return None
    at = argv.index(bitcode)
    rest = argv[:at - 1] + argv[at + 1:]
    return [("" if a == source else a) for a in rest]


def _plan_groups(jobs: list[Job], headers: dict[int, SharedHeader]) -> list[list[int]]:
    """Indexes of jobs that can share one clang process: same recipe tools, the same clang
    arguments but for the source (whose names differ: clang names each bitcode after its source)
    and the same shared header. Groups of two or more only."""
    groups: dict[tuple[object, ...], list[int]] = {}
    for index, job in enumerate(jobs):
        source = str(job.roots.source)
        argv = render(job.recipe, replace(job.roots, bitcode="<bitcode>", object="<object>"))
        key = _grouped_clang(argv[0], source, "<bitcode>") if job.recipe[0].tool == "clang" else None
        if key is None:
            continue
        group = groups.setdefault((tuple(step.tool for step in job.recipe), tuple(key),
                                   headers[index].id if index in headers else None), [])
        if all(Path(str(jobs[i].roots.source)).stem != Path(source).stem for i in group):
            group.append(index)
    return [g for g in groups.values() if len(g) > 1]


def _write_group(workdir: Path, name: str, members: list[tuple[str, Job]], header: SharedHeader | None) -> None:
    """The group's steps as compile_unit.sh --group runs them in /out/<name>, with the units each
    step serves (`owners`) and its tool (`tools`): one clang for every source, each unit's middle
    steps, and its last step once for all when only the object differs (llvm-strip takes many)."""
    gdir = workdir / name
    gdir.mkdir()
    rendered = []
    for unit, job in members:
        bitcode = f"/out/{name}/{Path(str(job.roots.source)).stem}.bc"
        rendered.append(render(job.recipe, replace(job.roots, bitcode=bitcode, object=f"/out/{unit}/unit.o")))
        (workdir / unit / "group").write_text(name)
    first = rendered[0][0]
    clang = _grouped_clang(first, str(members[0][1].roots.source), first[first.index("-o") + 1])
    assert clang is not None
    at = clang.index("")
    clang[at:at + 1] = [str(job.roots.source) for _, job in members]
    units = [unit for unit, _ in members]
    steps: list[tuple[str, list[str], list[str]]] = [("clang", clang, units)]
    last = [argv[-1] for argv in rendered]
    objects = [f"/out/{unit}/unit.o" for unit in units]
    merged = all(argv[:-1] == last[0][:-1] and argv[-1] == obj for argv, obj in zip(last, objects, strict=True)) \
        and len(members[0][1].recipe) > 2
    for (unit, job), argv in zip(members, rendered, strict=True):
        middle = range(1, len(job.recipe) - 1) if merged else range(1, len(job.recipe))
        steps += [(job.recipe[i].tool, argv[i], [unit]) for i in middle]
    if merged:
        steps.append((members[0][1].recipe[-1].tool, [*last[0][:-1], *objects], units))
    (gdir / "members").write_text("\n".join(units) + "\n")
    (gdir / "owners").write_text("".join(" ".join(owners) + "\n" for _, _, owners in steps))
    (gdir / "tools").write_text("".join(tool + "\n" for tool, _, _ in steps))
    argvs = [argv for _, argv, _ in steps]
    (gdir / "steps").write_text(_steps_text(argvs))
    if header is not None:
        (gdir / "pch").write_text(header.id)
        (gdir / "steps.pch").write_text(_steps_text(_reading_pch(argvs, header)))


def _pch_ns(workdir: Path) -> int:
    """Nanoseconds the batch spent precompiling headers; a header that failed is logged (its
    units compiled without it)."""
    total = 0
    for path in sorted((workdir / "pch").glob("*/result")):
        status, ns = path.read_text().split()
        total += int(ns)
        if status != "0":
            readers = (path.parent / "readers").read_text().splitlines() if (path.parent / "readers").exists() else []
            why = f"a header tests a variant macro's value: {' | '.join(readers[:3])}" if status == "excluded" else \
                (path.parent / "stderr").read_text(errors="replace").strip()[-300:]
            log.warning("precompiled header %s not used (%s): %s", path.parent.name, status, why)
    return total


def _gone(container: Any) -> bool:
    """Whether the container has exited (or can no longer be inspected)."""
    import docker.errors

    try:
        container.reload()
    except docker.errors.DockerException:
        return True
    return container.status in ("exited", "dead")


def run_batch(
    client: docker.DockerClient,
    image: ToolchainImage,
    jobs: list[Job],
    sources: Path,
    mounts: dict[Path, str],
    cache: ObjectCache,
    scratch: Path,
    on_done: Callable[[Outcome], None],
    stop: threading.Event,
    parallel: int | None = None,
    pch: bool = True,
    group_units: bool = True,
) -> int:
    """Compile `jobs` in one container; `mounts` maps host dirs to read-only container paths.
    Each outcome goes to `on_done` as soon as its unit finishes; `stop` kills the container.
    Returns the nanoseconds spent precompiling shared headers (not part of any unit's time);
    `pch=False` compiles every unit from its source alone, `group_units=False` each in its own
    processes (same objects either way, slower)."""
    parallel = parallel or os.cpu_count() or 1
    workdir = make_scratch(scratch, "batch")
    pending: dict[str, Job] = {}
    try:
        headers = _shared_headers(jobs, sources) if pch else {}
        (workdir / "pch").mkdir()
        _write_headers(workdir, headers)
        for index, job in enumerate(jobs):
            name = f"u{index:04d}"
            (workdir / name).mkdir()
            _write_steps(workdir / name, job, headers.get(index))
            pending[name] = job
        # Tasks for xargs, one per line: groups, then the units in none.
        tasks: list[str] = []
        grouped: set[int] = set()
        for number, group in enumerate(_plan_groups(jobs, headers) if group_units else []):
            _write_group(workdir, f"g{number:04d}", [(f"u{i:04d}", jobs[i]) for i in group], headers.get(group[0]))
            tasks.append(f"--group g{number:04d}")
            grouped.update(group)
        tasks += [f"u{i:04d}" for i in range(len(jobs)) if i not in grouped]
        (workdir / "tasks").write_text("\n".join(tasks) + "\n")
        volumes = {str(sources): {"bind": "/src", "mode": "ro"}, str(workdir): {"bind": "/out", "mode": "rw"}}
        volumes.update({str(host): {"bind": path, "mode": "ro"} for host, path in mounts.items()})
        # Per-unit errors land in /out/<unit>/stderr; this file catches the shell's and xargs' own.
        script = (f"{{ ls /out/pch | xargs -r -P {parallel} -n 1 compile_unit.sh --pch; "
                  f"xargs -P {parallel} -L 1 compile_unit.sh < /out/tasks; }} 2> /out/batch.stderr; touch /out/done")
        container = containers.start(client, image.tag, ["sh", "-c", script], volumes)

        def collect() -> None:
            for name in sorted(pending):
                if (workdir / name / "result").exists():
                    on_done(_finish(pending.pop(name), workdir / name, image, cache))

        try:
            # The batch's shell says it is done in a file: watched like the units' results, so the
            # docker API (a request and its inspect JSON, host and daemon CPU taken from the
            # compiles) is asked only now and then, for a container that died without saying so.
            asked = time.monotonic()
            while not stop.is_set() and not (workdir / "done").exists():
                collect()
                if time.monotonic() - asked >= _DOCKER_POLL_SECONDS:
                    asked = time.monotonic()
                    if _gone(container):
                        break
                stop.wait(_POLL_SECONDS)
        except BaseException:
            containers.remove(container)
            raise
        exited = containers.wait(container, stop)  # removes it; raises Interrupted once `stop` is set
        collect()
        stderr = (workdir / "batch.stderr").read_text(errors="replace").strip()[-2000:] \
            if (workdir / "batch.stderr").exists() else ""
        for name in sorted(pending):
            on_done(Outcome(pending.pop(name), "failed",
                            error=f"container exited ({exited}) before this unit ran: {stderr}"))
        return _pch_ns(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
