"""Where a compile runs: a batch of units (one kernel's) inside one toolchain container.

The container runs templates/compile_unit.sh for every unit with `xargs -P <cores>`, so a
kernel's units share one container start and every core. The host watches the output
directory and validates and caches each object as soon as its unit finishes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors

from .cache import CachedObject, ObjectCache
from .errors import ToolchainError
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
    status_text, ns_text = (out / "result").read_text().split()
    stderr = (out / "stderr").read_text(errors="replace") if (out / "stderr").exists() else ""
    compile_ns = int(ns_text)
    if status_text != "0":
        return Outcome(job, "failed", compile_ns, stderr.strip() or f"compiler exited with status {status_text}")
    data = (out / "unit.o").read_bytes()
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
    parallel: int | None = None,
) -> list[Outcome]:
    """Compile `jobs` in one container; `mounts` maps host dirs to read-only container paths."""
    parallel = parallel or os.cpu_count() or 1
    scratch.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(dir=scratch, prefix="batch-"))
    pending: dict[str, Job] = {}
    try:
        for index, job in enumerate(jobs):
            name = f"u{index:04d}"
            (workdir / name).mkdir()
            (workdir / name / "args").write_text("\n".join(job.args) + "\n")
            pending[name] = job
        volumes = {str(sources): {"bind": "/src", "mode": "ro"}, str(workdir): {"bind": "/out", "mode": "rw"}}
        volumes.update({str(host): {"bind": path, "mode": "ro"} for host, path in mounts.items()})
        try:
            container = client.containers.run(
                image.tag,
                ["sh", "-c", f"ls /out | xargs -P {parallel} -n 1 compile_unit.sh"],
                volumes=volumes,
                network_disabled=True,
                user=f"{os.getuid()}:{os.getgid()}",
                detach=True,
            )
        except docker.errors.DockerException as exc:
            raise ToolchainError(f"cannot start the toolchain container: {exc}") from None
        outcomes: list[Outcome] = []
        try:
            while pending:
                running = container.status != "exited"
                for name in sorted(pending):
                    if (workdir / name / "result").exists():
                        outcome = _finish(pending.pop(name), workdir / name, image, cache)
                        outcomes.append(outcome)
                        on_done(outcome)
                if not running:
                    break
                time.sleep(_POLL_SECONDS)
                container.reload()
            exit_info = container.wait()
            for name in sorted(pending):
                result = workdir / name / "result"
                if result.exists():
                    outcome = _finish(pending[name], workdir / name, image, cache)
                else:
                    logs = container.logs().decode(errors="replace").strip()[-2000:]
                    outcome = Outcome(pending[name], "failed",
                                      error=f"container exited ({exit_info.get('StatusCode')}) before this unit ran: {logs}")
                outcomes.append(outcome)
                on_done(outcome)
            pending.clear()
        finally:
            try:
                container.remove(force=True)
            except docker.errors.DockerException:
                pass
        return outcomes
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
