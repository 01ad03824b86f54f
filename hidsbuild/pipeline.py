"""build-all: stitch, plan units against the cache, compile what is missing, write build/.

Nothing here starts a container or touches the network unless some unit is missing from the
cache: a rebuild with nothing changed only hashes sources and reads the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hids_bytecode.recipe import recipe_json

from . import btf_header
from .apt import PrivateApt
from .artifacts import write_if_changed
from .cache import ObjectCache
from .compile import Job, Outcome, run_batch
from .containers import reap_leftovers
from .errors import PackageUnavailable, UnitsFailed
from .headers import HeadersCache, KernelHeaders
from .kernels import Kernel, Matrix, load_matrix
from .owners import make_scratch, reap_scratch
from .report import UnitProgress, console, failure_report, skipped_report, step, summary_table
from .stitch import Stitched, StitchError, stitch
from .toolchain import ToolchainImage, docker_client, ensure_image, toolchain_id
from .units import (
    BTF_DIR,
    HEADERS_DIR,
    Unit,
    cache_key,
    compile_recipe,
    container_roots,
    enumerate_units,
    shard,
    skip_reason,
)

__all__ = ["BuildOptions", "BuildResult", "build_all"]


@dataclass(frozen=True)
class BuildOptions:
    matrix_path: Path
    build_dir: Path
    cache_dir: Path
    shard: tuple[int, int] | None = None
    parallel: int | None = None
    rebuild_toolchain: bool = False  # build the image anew, without docker's layer cache
    # precompile the headers a kernel's units share and compile a kernel x variant's programs in one
    # clang; False (each unit alone, from its source) only to prove the objects the same
    pch: bool = True


@dataclass
class BuildResult:
    outcomes: list[Outcome] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[Unit, str]] = field(default_factory=list)  # units that cannot run, with the reason
    pch_ns: dict[str, int] = field(default_factory=dict)  # target -> time spent precompiling its shared headers

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


class _Planner:
    """Works out each unit's compiler arguments and cache key from what is on disk."""

    def __init__(self, matrix: Matrix, cache_dir: Path, stitched: dict[str, Stitched]) -> None:
        self.matrix = matrix
        self.cache_dir = cache_dir
        self.stitched = stitched
        self.headers = HeadersCache(cache_dir / "headers", None)
        self.toolchain_id = toolchain_id(matrix.toolchain)
        self._described: dict[Kernel, KernelHeaders | None] = {}
        self._btf_identity: dict[str, str | None] = {}
        self._configs: dict[Kernel, dict[str, str] | None] = {}

    def kernel_headers(self, kernel: Kernel) -> KernelHeaders | None:
        if kernel not in self._described:
            self._described[kernel] = None if self.headers.missing(kernel) else self.headers.describe(kernel)
        return self._described[kernel]

    def skip(self, unit: Unit) -> str | None:
        """Why the unit is not built, once its kernel's headers (and so its .config) are on disk."""
        if unit.kernel is None or unit.variant.syscall_wrapper:
            return None
        if unit.kernel not in self._configs:
            headers = self.kernel_headers(unit.kernel)
            if headers is None:
                return None
            self._configs[unit.kernel] = headers.kernel_config()
        return skip_reason(unit, self._configs[unit.kernel])

    def btf_header(self, arch: str) -> Path | None:
        """Where the arch's CO-RE vmlinux.h is cached, or None while its kernel's headers are not."""
        target = next(c for c in self.matrix.core if c.arch == arch)
        headers = self.kernel_headers(target.btf_from)
        return None if headers is None else btf_header.cache_path(self.cache_dir, target, headers.identity)

    def job(self, unit: Unit) -> Job | None:
        """The unit's job, or None while an input it depends on is not on disk yet."""
        source = self.stitched[unit.program.name].sha256
        if unit.kernel is None:
            if unit.arch not in self._btf_identity:
                path = self.btf_header(unit.arch)
                data = None if path is None else btf_header.load(path)
                self._btf_identity[unit.arch] = None if data is None else "btf:" + hashlib.sha256(data).hexdigest()
            identity = self._btf_identity[unit.arch]
            if identity is None:
                return None
            roots = container_roots(unit, None, self.matrix.toolchain.clang)
        else:
            headers = self.kernel_headers(unit.kernel)
            if headers is None:
                return None
            roots = container_roots(unit, headers, self.matrix.toolchain.clang)
            identity = headers.identity
        steps = compile_recipe(unit)
        return Job(unit, steps, roots, cache_key(unit, steps, roots, source, identity, self.toolchain_id))

    def forget(self) -> None:
        """Inputs were fetched or discarded: describe them again on the next look."""
        self._described.clear()
        self._btf_identity.clear()
        self._configs.clear()


def _stitch_all(matrix: Matrix) -> dict[str, Stitched]:
    project = matrix.path.parent
    include_dirs = [project / "bpf" / "include"]
    result = {}
    for program in matrix.programs:
        try:
            result[program.name] = stitch(program.name, project / program.source, project, include_dirs)
        except StitchError as exc:
            raise UnitsFailed(f"stitching {program.name}: {exc}") from None
    return result


def _index_entry(outcome: Outcome, matrix: Matrix, stitched: Stitched) -> dict[str, Any]:
    unit, obj = outcome.job.unit, outcome.object
    assert obj is not None
    if unit.kernel is not None:
        k = unit.kernel
        kernel: dict[str, Any] = {"release": k.release, "version": k.upstream, "arch": k.arch, "distro": k.distro,
                                  "flavour": k.flavour, "package_version": k.version, "suite": k.suite}
    else:
        btf_from = next(c.btf_from for c in matrix.core if c.arch == unit.arch)
        kernel = {"release": None, "arch": unit.arch, "btf_from": btf_from.release}
    return {
        "unit": unit.id,
        "program": unit.program.name,
        "kind": unit.kind,
        "kernel": kernel,
        "variant": unit.variant.as_dict(),
        "object": f"objects/{obj.meta['sha256']}.o",
        "sha256": obj.meta["sha256"],
        "size": obj.meta["size"],
        "programs": obj.meta["programs"],
        "maps": obj.meta["maps"],
        "toolchain": {"clang": obj.meta["clang"], "image": obj.meta["toolchain"]},
        "source": {"path": f"sources/{unit.program.name}-{stitched.sha256[:16]}.c", "sha256": stitched.sha256},
        "cflags": [*outcome.job.flags, str(outcome.job.roots.source)],
        "recipe": recipe_json(outcome.job.recipe),
        "compile_ns": obj.meta["compile_ns"],
    }


def _inputs(matrix: Matrix, planner: _Planner, units: list[Unit], stitched: dict[str, Stitched]) -> dict[str, Any]:
    """Every input of this build, for provenance: the matrix file, the toolchain (its id and
    the exact package pins the image is checked to hold), each header package with the sha256
    apt's signed index gave it, and each stitched source."""
    kernels = list(dict.fromkeys(u.kernel for u in units if u.kernel))
    kernels += [c.btf_from for c in matrix.core if any(u.kernel is None and u.arch == c.arch for u in units)]
    packages = {(p["name"], p["version"], p["arch"]): p for k in dict.fromkeys(kernels)
                for p in planner.headers.packages(k)}
    tc = matrix.toolchain
    return {
        "matrix": {"path": matrix.path.name, "sha256": hashlib.sha256(matrix.path.read_bytes()).hexdigest()},
        "toolchain": {"suite": tc.suite, "clang": tc.clang, "id": planner.toolchain_id, "packages": dict(tc.packages)},
        "headers": [packages[k] for k in sorted(packages)],
        "sources": {name: s.sha256 for name, s in sorted(stitched.items())},
    }


def _index_bytes(index: dict[str, Any]) -> bytes:
    """index.json's text: keys sorted, one line per unit (and per failure and skipped unit), each
    written by json's C encoder: an indented dump of the ~1 MB index runs the pure-Python encoder,
    0.1-0.25 s of every rebuild."""
    parts = []
    for key in sorted(index):
        value = index[key]
        if isinstance(value, list) and value:
            rows = ",\n".join(json.dumps(row, sort_keys=True) for row in value)
            parts.append(f"{json.dumps(key)}: [\n{rows}\n]")
        else:
            parts.append(f"{json.dumps(key)}: {json.dumps(value, sort_keys=True)}")
    return ("{\n" + ",\n".join(parts) + "\n}\n").encode()


def _write_build_dir(build_dir: Path, entries: list[dict[str, Any]], outcomes: list[Outcome],
                     stitched: dict[str, Stitched], failures: list[tuple[str, str]], inputs: dict[str, Any],
                     skipped: list[tuple[Unit, str]]) -> None:
    # The objects' bytes were checked against their recorded sha256 when the cache gave them (or
    # hashed when they were put): what is on disk is compared with them, not hashed again.
    objects = {o.object.meta["sha256"]: o.object.data for o in outcomes if o.object is not None}
    for sha, data in objects.items():
        write_if_changed(build_dir / "objects" / f"{sha}.o", data)
    for s in stitched.values():
        write_if_changed(build_dir / "sources" / f"{s.program}-{s.sha256[:16]}.c", s.text.encode())
    index = {"schema": 1, "units": sorted(entries, key=lambda e: e["unit"]),
             "failures": [{"unit": u, "error": e} for u, e in sorted(failures)], "inputs": inputs,
             "skipped": sorted(({"unit": u.id, "arch": u.arch, "reason": r} for u, r in skipped),
                               key=lambda s: s["unit"])}
    write_if_changed(build_dir / "index.json", _index_bytes(index))
    # Only what the index names stays: a stale object must never be bundled.
    keep_objects = {f"{e['sha256']}.o" for e in entries}
    keep_sources = {f"{s.program}-{s.sha256[:16]}.c" for s in stitched.values()}
    for sub, keep in (("objects", keep_objects), ("sources", keep_sources)):
        for path in (build_dir / sub).glob("*"):
            if path.name not in keep:
                path.unlink()


def build_all(opts: BuildOptions) -> BuildResult:
    """Run the whole pipeline; raise UnitsFailed (after writing every good unit) if any failed."""
    matrix = load_matrix(opts.matrix_path)
    with step("stitch sources"):
        stitched = _stitch_all(matrix)
    units = enumerate_units(matrix)
    if opts.shard:
        units = shard(units, *opts.shard)
    planner = _Planner(matrix, opts.cache_dir, stitched)
    # A build whose every unit is a cache hit never asks docker for the toolchain image (nor reads
    # its record): the toolchain id in each key is a hash of the pins, Dockerfile and compile script,
    # and an object is cached only after the image that compiled it was probed to hold exactly those
    # pins. So a hit is the output of this toolchain whatever became of the image since: deleted, it
    # is rebuilt (and probed) by the next build that compiles; replaced under its tag, that build's
    # ensure_image sees another image id and rebuilds it; rebuilt from the same pins, it yields the
    # same bytes (tests/test_toolchain_pins.py). Changed pins are a new id, so every key misses and
    # the build goes through ensure_image: no stale object is paired with a new toolchain id, and the
    # cache refuses an entry that records another id (tests/test_noop.py).
    cache = ObjectCache(opts.cache_dir / "objects", planner.toolchain_id)
    result = BuildResult()

    with step(f"plan {len(units)} units against the cache"):
        todo: list[Unit] = []
        for unit in units:
            reason = planner.skip(unit)
            if reason:
                result.skipped.append((unit, reason))
                continue
            job = planner.job(unit)
            hit = cache.get(job.key) if job else None
            if job and hit:
                result.outcomes.append(Outcome(job, "cached", hit.meta["compile_ns"], object=hit))
            else:
                todo.append(unit)
    console.print(f"  {len(units) - len(todo) - len(result.skipped)} cached, {len(result.skipped)} skipped, "
                  f"{len(todo)} to build")

    if todo:
        _build_missing(matrix, opts, planner, cache, todo, result, stitched)

    entries = [_index_entry(o, matrix, stitched[o.job.unit.program.name]) for o in result.outcomes if o.object]
    result.failures = sorted((o.job.unit.id, o.error) for o in result.outcomes if o.status == "failed")
    with step(f"write {opts.build_dir}"):
        _write_build_dir(opts.build_dir, entries, result.outcomes, stitched, result.failures,
                         _inputs(matrix, planner, units, stitched), result.skipped)

    rows: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    position = {unit.id: i for i, unit in enumerate(units)}
    for o in sorted(result.outcomes, key=lambda o: position[o.job.unit.id]):
        rows[o.job.unit.target][o.job.unit.variant.id][o.status] += 1
    for unit, _ in result.skipped:
        rows[unit.target][unit.variant.id]["skipped"] += 1
    variants = list(dict.fromkeys(v.id for p in matrix.programs for v in p.variants))
    console.print(summary_table(rows, variants))
    skipped_report([(u.id, r) for u, r in result.skipped])
    console.print(f"built {result.count('built')}, cached {result.count('cached')}, skipped {len(result.skipped)}, "
                  f"failed {result.count('failed')}")
    if result.failures:
        failure_report(result.failures)
        raise UnitsFailed(f"{len(result.failures)} of {len(units) - len(result.skipped)} units failed: "
                          + ", ".join(u for u, _ in result.failures))
    return result


def _prepare_inputs(client: Any, image: ToolchainImage, matrix: Matrix, opts: BuildOptions, planner: _Planner,
                    todo: list[Unit]) -> None:
    """Make every input the missing units compile against whole: header trees checked file by file
    (a changed one is fetched again), missing ones fetched concurrently, CO-RE headers dumped."""
    kernels = list(dict.fromkeys(u.kernel for u in todo if u.kernel))
    core_arches = list(dict.fromkeys(u.arch for u in todo if u.kernel is None))
    dump_arches = [a for a in core_arches if (path := planner.btf_header(a)) is None or btf_header.load(path) is None]
    core_kernels = [c.btf_from for c in matrix.core if c.arch in dump_arches]
    wanted = list(dict.fromkeys(kernels + core_kernels))
    with step(f"check the header trees of {len(wanted)} kernel(s)"):
        planner.headers.check(wanted)
    need = [k for k in wanted if planner.headers.missing(k)]
    if need:
        with step(f"fetch kernel headers for {len(need)} kernel(s)"):
            served = [k for k in need if k.packaging.archive is not None]  # local kernels need no archive
            apt = PrivateApt(opts.cache_dir / "apt", [k.suite for k in served], [k.deb_arch for k in served]) \
                if served else None
            HeadersCache(opts.cache_dir / "headers", apt).fetch(need)
            for kernel in need:
                console.print(f"  {kernel.release}: {', '.join(kernel.headers)} {kernel.version}", soft_wrap=True)
    planner.forget()
    for arch in dump_arches:
        target = next(c for c in matrix.core if c.arch == arch)
        with step(f"vmlinux.h for CO-RE {arch} from {target.btf_from.release}"):
            described, path = planner.kernel_headers(target.btf_from), planner.btf_header(arch)
            assert described is not None and path is not None
            btf_header.generate(client, image.tag, described, path, opts.cache_dir / "tmp")
    planner.forget()


def _compile(client: Any, image: ToolchainImage, opts: BuildOptions, planner: _Planner, cache: ObjectCache,
             batches: dict[str, list[Job]], stitched: dict[str, Stitched], result: BuildResult) -> None:
    """Compile each target's batch in its own container, targets side by side; Ctrl-C (or SIGTERM)
    stops every container at once."""
    lock = threading.Lock()
    stop = threading.Event()
    src_dir = make_scratch(opts.cache_dir / "tmp", "src")
    try:
        for s in stitched.values():
            (src_dir / f"{s.program}.c").write_text(s.text)
        total = len(result.outcomes) + sum(len(b) for b in batches.values())
        with step(f"compile {sum(len(b) for b in batches.values())} units in {len(batches)} container(s)"), \
                UnitProgress(total, len(result.outcomes)) as progress:

            def done(outcome: Outcome) -> None:
                with lock:
                    result.outcomes.append(outcome)
                    progress.done(outcome.status)

            def batch(jobs: list[Job]) -> None:
                unit = jobs[0].unit
                if unit.kernel is not None:
                    headers = planner.kernel_headers(unit.kernel)
                    assert headers is not None
                    mounts = {root: f"{HEADERS_DIR}/{i}" for i, root in enumerate(headers.packages)}
                else:
                    path = planner.btf_header(unit.arch)
                    assert path is not None
                    mounts = {path.parent: f"{BTF_DIR}/{unit.arch}"}
                pch_ns = run_batch(client, image, jobs, src_dir, mounts, cache, opts.cache_dir / "tmp", done, stop,
                                   opts.parallel, opts.pch, group_units=opts.pch)
                with lock:
                    result.pch_ns[unit.target] = pch_ns

            cores = opts.parallel or os.cpu_count() or 1
            # One container more than cores: while one starts, stops or precompiles its header on
            # a single core, the others' compiles keep every core busy. The costliest batches go
            # first (CO-RE's vmlinux.h is the largest header), so the build does not end on one.
            pool = ThreadPoolExecutor(max_workers=max(1, min(len(batches), cores + 1 if cores > 1 else 1)))
            order = sorted(batches.values(), key=lambda jobs: (jobs[0].unit.kernel is not None, -len(jobs)))
            try:
                for future in [pool.submit(batch, jobs) for jobs in order]:
                    # Woken every poll: a signal the kernel delivers to a worker thread runs its
                    # handler only when the main thread runs again, so a blocking result() would
                    # hold Ctrl-C or SIGTERM until the batch ended.
                    while True:
                        try:
                            future.result(timeout=0.2)
                            break
                        except TimeoutError:
                            continue
            except BaseException:
                stop.set()  # every running batch kills its container within a poll
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        shutil.rmtree(src_dir, ignore_errors=True)


def _build_missing(matrix: Matrix, opts: BuildOptions, planner: _Planner, cache: ObjectCache, todo: list[Unit],
                   result: BuildResult, stitched: dict[str, Stitched]) -> None:
    client = docker_client()
    reap_leftovers(client)
    reap_scratch(opts.cache_dir / "tmp")
    with step("toolchain image"):
        image = ensure_image(client, matrix.toolchain, opts.cache_dir, opts.rebuild_toolchain)
    _prepare_inputs(client, image, matrix, opts, planner, todo)
    batches: dict[str, list[Job]] = defaultdict(list)
    for unit in todo:
        reason = planner.skip(unit)  # the .config of headers just fetched
        if reason:
            result.skipped.append((unit, reason))
            continue
        job = planner.job(unit)
        if job is None:
            raise PackageUnavailable(f"inputs of {unit.id} are still missing after fetching them")
        hit = cache.get(job.key)  # the headers just fetched may complete a key already cached
        if hit:
            result.outcomes.append(Outcome(job, "cached", hit.meta["compile_ns"], object=hit))
        else:
            batches[unit.target].append(job)
    _compile(client, image, opts, planner, cache, batches, stitched, result)
