"""Where a compile runs: a batch of units (one kernel's) inside one toolchain container.

Each unit's compile recipe is rendered here with the container's paths into `steps`, one
shell-quoted argv per line, which templates/compile_unit.sh runs for every unit with
`xargs -P <cores>`, so a kernel's units share one container start and every core; first it
precompiles the headers that two or more of the batch's units share (hidsbuild/pch.py), once
each. The host watches the bind-mounted output directory and validates and caches each object
as soon as its unit finishes; a unit whose object is cut or invalid fails and leaves nothing in
the cache.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

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
    return Outcome(job, "built", compile_ns, object=cache.put(job.key, data, meta), pch=how == "pch",
                   step_cpu=_step_cpu(job, out, how == "pch"))


def _children_cpu(path: Path) -> list[float]:
    """The children's CPU seconds of each `times` output in `path` ("0m0.01s 0m0.00s" for the
    shell, then the same for its children); empty if there is none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    return [sum(int(m) * 60 + float(s) for m, s in _TIMES.findall(child)) for child in lines[1::2]]


def _step_cpu(job: Job, out: Path, pch: bool) -> dict[str, float]:
    """CPU seconds per tool of the unit's steps (compile_unit.sh notes `times` before and after
    each), and with a shared header the unit's share of that header's precompile."""
    seen = _children_cpu(out / "cpu")
    if len(seen) != len(job.recipe) + 1:
        return {}
    spent: dict[str, float] = {}
    for step, before, after in zip(job.recipe, seen[:-1], seen[1:], strict=True):
        spent[step.tool] = spent.get(step.tool, 0.0) + after - before
    header = out.parent / "pch" / (out / "pch").read_text() if pch else None
    if header is not None and _children_cpu(header / "cpu"):
        spent["pch"] = _children_cpu(header / "cpu")[0] / int((header / "users").read_text())
    return spent


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


def _write_steps(unit_dir: Path, job: Job, header: SharedHeader | None) -> None:
    """The unit's recipe as the container runs it: `steps`, and with a shared header `steps.pch`,
    the same with clang reading that header first."""
    out = f"/out/{unit_dir.name}"
    argv = render(job.recipe, replace(job.roots, bitcode=f"{out}/unit.bc", object=f"{out}/unit.o"))
    (unit_dir / "steps").write_text("".join(shlex.join(a) + "\n" for a in argv))
    if header is not None:
        assert argv[0][0] == "clang"
        argv[0][1:1] = ["-include-pch", f"/tmp/pch/{header.id}.pch"]
        (unit_dir / "pch").write_text(header.id)
        (unit_dir / "steps.pch").write_text("".join(shlex.join(a) + "\n" for a in argv))


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
) -> int:
    """Compile `jobs` in one container; `mounts` maps host dirs to read-only container paths.
    Each outcome goes to `on_done` as soon as its unit finishes; `stop` kills the container.
    Returns the nanoseconds spent precompiling shared headers (not part of any unit's time);
    `pch=False` compiles every unit from its source alone (same objects, slower)."""
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
        volumes = {str(sources): {"bind": "/src", "mode": "ro"}, str(workdir): {"bind": "/out", "mode": "rw"}}
        volumes.update({str(host): {"bind": path, "mode": "ro"} for host, path in mounts.items()})
        # Per-unit errors land in /out/<unit>/stderr; this file catches the shell's and xargs' own.
        script = (f"{{ ls /out/pch | xargs -r -P {parallel} -n 1 compile_unit.sh --pch; "
                  f"ls /out | grep '^u' | xargs -P {parallel} -n 1 compile_unit.sh; }} 2> /out/batch.stderr")
        container = containers.start(client, image.tag, ["sh", "-c", script], volumes)

        def collect() -> None:
            for name in sorted(pending):
                if (workdir / name / "result").exists():
                    on_done(_finish(pending.pop(name), workdir / name, image, cache))

        exit_status: list[int] = []

        def watch() -> None:
            try:
                exit_status.append(containers.wait(container, stop))
            except containers.Interrupted:
                pass  # the container is gone; the loop below sees `stop` and says so

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        while watcher.is_alive():
            collect()
            watcher.join(_POLL_SECONDS)
        if stop.is_set():
            raise containers.Interrupted()
        collect()
        stderr = (workdir / "batch.stderr").read_text(errors="replace").strip()[-2000:] \
            if (workdir / "batch.stderr").exists() else ""
        exited = exit_status[0] if exit_status else "?"
        for name in sorted(pending):
            on_done(Outcome(pending.pop(name), "failed",
                            error=f"container exited ({exited}) before this unit ran: {stderr}"))
        return _pch_ns(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
