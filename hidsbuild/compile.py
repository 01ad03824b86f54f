"""Where a compile runs: a batch of units (one kernel's) inside one toolchain container.

The container runs templates/compile_unit.sh for every unit with `xargs -P <cores>`, so a
kernel's units share one container start and every core. The host watches the bind-mounted
output directory and validates and caches each object as soon as its unit finishes; a unit
whose object is cut or invalid fails and leaves nothing in the cache.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from . import containers
from .cache import CachedObject, ObjectCache
from .owners import make_scratch
from .toolchain import ToolchainImage
from .units import Unit
from .validate import InvalidObject, validate_object

__all__ = ["Job", "Outcome", "run_batch"]

_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Job:
    unit: Unit
    args: list[str]
    key: str


@dataclass
class Outcome:
    job: Job
    status: str  # "built" | "cached" | "failed"
    compile_ns: int = 0
    error: str = ""
    object: CachedObject | None = field(default=None, repr=False)


def _finish(job: Job, out: Path, image: ToolchainImage, cache: ObjectCache) -> Outcome:
    stderr = (out / "stderr").read_text(errors="replace") if (out / "stderr").exists() else ""
    try:
        status_text, ns_text = (out / "result").read_text().split()
        compile_ns = int(ns_text)
    except ValueError:
        return Outcome(job, "failed", 0, f"the unit's result record is malformed: {stderr.strip()}")
    if status_text != "0":
        return Outcome(job, "failed", compile_ns, stderr.strip() or f"compiler exited with status {status_text}")
    try:
        data = (out / "unit.o").read_bytes()
    except OSError:
        return Outcome(job, "failed", compile_ns, "the compiler reported success but left no object")
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
        "toolchain": image.recipe,
        "compile_ns": compile_ns,
        "warnings": stderr.strip(),
    }
    return Outcome(job, "built", compile_ns, object=cache.put(job.key, data, meta))


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
) -> None:
    """Compile `jobs` in one container; `mounts` maps host dirs to read-only container paths.
    Each outcome goes to `on_done` as soon as its unit finishes; `stop` kills the container."""
    parallel = parallel or os.cpu_count() or 1
    workdir = make_scratch(scratch, "batch")
    pending: dict[str, Job] = {}
    try:
        for index, job in enumerate(jobs):
            name = f"u{index:04d}"
            (workdir / name).mkdir()
            (workdir / name / "args").write_text("\n".join(job.args) + "\n")
            pending[name] = job
        volumes = {str(sources): {"bind": "/src", "mode": "ro"}, str(workdir): {"bind": "/out", "mode": "rw"}}
        volumes.update({str(host): {"bind": path, "mode": "ro"} for host, path in mounts.items()})
        # Per-unit errors land in /out/<unit>/stderr; this file catches the shell's and xargs' own.
        script = f"ls /out | grep '^u' | xargs -P {parallel} -n 1 compile_unit.sh 2> /out/batch.stderr"
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
        for name in sorted(pending):
            on_done(Outcome(pending.pop(name), "failed",
                            error=f"container exited ({exit_status[0] if exit_status else '?'}) before this unit ran: {stderr}"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
