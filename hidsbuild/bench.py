"""invoke bench: build throughput, caching, wheel size, loader latency and the event path, as
printed figures.

The machine is shared and noisy, so timed figures are medians of several runs and every target
is a ratio or count measured in the same run. The compile floor is measured, not summed from a
parallel build: all units of one kernel per series are compiled serially (--jobs 1) on otherwise
idle cores, and floor = units x that per-unit time / cores. Figures that miss their target stay in the
output, marked. Inputs (kernel headers, toolchain image) are warmed first and shared: the
figures are about compiling, caching and loading, not about the network.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from debian.debian_support import Version as DebVersion
from rich.table import Table

from .errors import BuildError
from .kernels import load_matrix
from .pipeline import BuildOptions, BuildResult, build_all
from .report import console, step
from .units import Unit

__all__ = ["Figure", "run_bench"]

ROOT = Path(__file__).resolve().parent.parent
# Every served kernel, checked in beside the default matrix: where scaling finds kernels beyond a matrix's.
ALL_KERNELS = ROOT / "kernels-all.yaml"
_SHARED_INPUTS = ("headers", "apt", "state", "btf")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def _cache_with_shared_inputs(base: Path, shared: Path) -> Path:
    cache = Path(tempfile.mkdtemp(dir=base, prefix="cache-"))
    for sub in _SHARED_INPUTS:
        (shared / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(shared / sub)
    return cache


def _quiet_build(opts: BuildOptions) -> tuple[float, BuildResult]:
    start = time.perf_counter()
    with console.capture():
        result = build_all(opts)
    return time.perf_counter() - start, result


def _command_seconds(argv: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def _project_copy(matrix_path: Path, dest: Path, kernels: list[dict[str, Any]] | None = None,
                  core: bool = True) -> Path:
    """A copy of the project's sources and matrix, optionally with other kernels and no CO-RE."""
    shutil.copytree(ROOT / "bpf", dest / "bpf")
    doc = yaml.safe_load(matrix_path.read_text())
    if kernels is not None:
        doc["kernels"] = kernels
    if not core:
        doc.pop("core", None)
    (dest / "kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest / "kernels.yaml"


def _series(unit: Unit) -> str:
    """Kernels of one upstream series and arch parse much the same headers: one sample serves them."""
    if unit.kernel is None:
        return unit.target
    return f"{'.'.join(unit.kernel.upstream.split('.')[:2])}/{unit.arch}"


def bench_serial(matrix_path: Path, shared: Path, work: Path) -> tuple[dict[str, float], Figure, Figure]:
    """Per-unit pure compile time, measured serially (--jobs 1: one container at a time, one
    compile at a time) on all units of the first kernel of each series and on the CO-RE targets,
    shared headers' precompile time included. Returns seconds per unit by series, that figure and
    the profile behind it."""
    matrix = load_matrix(matrix_path)
    doc = yaml.safe_load(matrix_path.read_text())
    first: dict[str, str] = {}
    # The kernels CO-RE takes its BTF from stand for their series, so the sample keeps them.
    for k in [c.btf_from for c in matrix.core] + list(matrix.kernels):
        first.setdefault(f"{'.'.join(k.upstream.split('.')[:2])}/{k.arch}", k.release)
    sample = [k for k in doc["kernels"] if k["release"] in first.values()]
    copy = _project_copy(matrix_path, work / "serial", sample)
    what = f"{len(sample)} kernel(s), one per series, and {len(matrix.core)} CO-RE target(s)"
    with step(f"serial compile of {what}, --jobs 1"):
        _, result = _quiet_build(BuildOptions(copy, work / "serial-build", _cache_with_shared_inputs(work, shared),
                                              parallel=1))
    spent: dict[str, list[float]] = {}
    for o in result.outcomes:
        if o.status == "built":
            spent.setdefault(_series(o.job.unit), []).append(o.compile_ns / 1e9)
    targets = {_series(o.job.unit): o.job.unit.target for o in result.outcomes}
    per_unit = {s: (sum(t) + result.pch_ns.get(targets[s], 0) / 1e9) / len(t) for s, t in spent.items()}
    units = sum(len(t) for t in spent.values())
    total = sum(sum(t) for t in spent.values()) + sum(result.pch_ns.values()) / 1e9
    mean = total / units
    # CPU beside wall time: what the tools themselves used, less bent by a machine others share.
    cpu = sum(sum(o.step_cpu.values()) for o in result.outcomes if o.status == "built") / units
    return per_unit, Figure("serial compile, core-seconds per unit", mean, "s", "<= 0.6 s", mean <= 0.6,
                            {"units": units, "cpu_s_per_unit": cpu, "pch_s": sum(result.pch_ns.values()) / 1e9,
                             "grouped": sum(1 for o in result.outcomes if o.grouped),
                             **{f"{s}_s": v for s, v in sorted(per_unit.items())}}), _profile(result, units)


def _profile(result: BuildResult, units: int) -> Figure:
    """Where a unit's serial compile time goes, in CPU seconds (less bent by a busy machine than
    wall time): its share of the shared header's precompile and each step of its compile recipe."""
    steps: dict[str, float] = {}
    for o in result.outcomes:
        for tool, seconds in o.step_cpu.items():
            steps[tool] = steps.get(tool, 0.0) + seconds
    per_unit = {f"{name}_s": seconds / units for name, seconds in steps.items()}
    return Figure("serial compile profile, seconds per unit", sum(per_unit.values()), "s", "",
                  None, {**per_unit, "units": units, "with_pch": sum(1 for o in result.outcomes if o.pch)})


def _extra_kernels(doc: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` kernels: the matrix's, then the newest others of kernels-all.yaml. That file holds only
    kernels whose packages the pool really serves; the archive index also lists some that 404."""
    kernels = list(doc["kernels"])
    if count <= len(kernels):
        return kernels[:count]
    have = {k["release"] for k in kernels}
    served = yaml.safe_load(ALL_KERNELS.read_text())["kernels"]
    for k in sorted(served, key=lambda k: DebVersion(k["version"]), reverse=True):
        if len(kernels) == count:
            break
        if k["release"] not in have:
            have.add(k["release"])
            kernels.append(k)
    if len(kernels) < count:
        raise SystemExit(f"error: --scaling {count}: only {len(kernels)} kernels in the matrix and {ALL_KERNELS.name}")
    return kernels


def _warm_headers(matrix_path: Path, shared: Path) -> None:
    from .apt import PrivateApt
    from .headers import HeadersCache

    kernels = load_matrix(matrix_path).kernels
    need = [k for k in kernels if HeadersCache(shared / "headers", None).missing(k)]
    if need:
        apt = PrivateApt(shared / "apt", [k.suite for k in need], [k.deb_arch for k in need])
        HeadersCache(shared / "headers", apt).fetch(need)


def bench_scaling(matrix_path: Path, shared: Path, work: Path, runs: int, counts: list[int]) -> list[Figure]:
    """Cold builds of the first N kernels (no CO-RE), served kernels added beyond the matrix's;
    the cost of a unit should not grow with the matrix."""
    cores = os.cpu_count() or 1
    doc = yaml.safe_load(matrix_path.read_text())
    kernels = _extra_kernels(doc, max(counts))
    figures: list[Figure] = []
    walls: dict[int, float] = {}
    units: dict[int, int] = {}
    for count in counts:
        copy = _project_copy(matrix_path, work / f"scale-{count}", kernels[:count], core=False)
        with step(f"scaling: cold build of {count} kernel(s)"):
            _warm_headers(copy, shared)
            times = []
            for _ in range(runs):
                wall, result = _quiet_build(BuildOptions(copy, work / f"scale-{count}-build",
                                                         _cache_with_shared_inputs(work, shared)))
                times.append(wall)
        walls[count], units[count] = _median(times), result.count("built")
        figures.append(Figure(f"cold build of {count} kernel(s)", walls[count], "s",
                              detail={"units": units[count], "core_s_per_unit": walls[count] * cores / units[count],
                                      "core_s_per_kernel": walls[count] * cores / count, "runs": runs}))
    # Each build also pays fixed costs (planning, checking the toolchain and header trees, container
    # starts) that a small matrix cannot amortize: flatness is judged on the cost of the units each
    # doubling adds, core-seconds per added unit.
    marginal = {f"{a}->{b}_kernels": (walls[b] - walls[a]) * cores / (units[b] - units[a])
                for a, b in itertools.pairwise(counts) if units[b] > units[a]}
    if len(marginal) > 1:
        low = min(marginal.values())
        spread = max(marginal.values()) / low if low > 0 else float("inf")  # noise can make a step free
        figures.append(Figure(f"scaling {min(counts)}..{max(counts)} kernels: core-s per added unit, max / min", spread,
                              "x", "<= 1.15", spread <= 1.15, marginal))
    return figures


def bench_noop(matrix_path: Path, build_dir: Path, cache: Path, work: Path, runs: int) -> Figure:
    """`invoke build-all` again with nothing changed, in its own process as a user runs it: with its
    modules' bytecode cached (in work/, whatever PYTHONDONTWRITEBYTECODE says), without and with the
    wheel; beside it the floor no build can go below, the interpreter and invoke loading tasks.py."""
    invoke = [sys.executable, "-m", "invoke", "--search-root", str(ROOT)]
    common = ["--matrix", str(matrix_path), "--build-dir", str(build_dir), "--cache-dir", str(cache)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    with_wheel = [*invoke, "build-all", *common, "--dist", str(work / "noop-dist")]
    with step("no-op rebuild"):
        _command_seconds(with_wheel, 1, env)  # writes the wheel (and the bytecode) the timed runs keep
        noop = _command_seconds([*invoke, "build-all", "--no-bundle", *common], max(runs, 5), env)
        detail = {"runs": len(noop), "min_s": min(noop),
                  "with_wheel_s": _median(_command_seconds(with_wheel, max(runs, 5), env)),
                  "python_start_s": _median(_command_seconds([sys.executable, "-c", "pass"], 10, env)),
                  "invoke_list_s": _median(_command_seconds([*invoke, "--list"], 5, env))}
    return Figure("no-op rebuild (invoke build-all)", _median(noop), "s", "< 1 s", _median(noop) < 1.0, detail)


def bench_build(matrix_path: Path, shared: Path, work: Path, runs: int, scaling: list[int]) -> list[Figure]:
    figures: list[Figure] = []
    cores = os.cpu_count() or 1
    with step("warm inputs (headers, toolchain image, vmlinux.h)"):
        warm_cache = _cache_with_shared_inputs(work, shared)
        _quiet_build(BuildOptions(matrix_path, work / "warm-build", warm_cache))

    per_unit, serial, profile = bench_serial(matrix_path, shared, work)
    figures += [serial, profile]

    walls, floors, units, caches = [], [], 0, []
    for run in range(runs):
        with step(f"cold build {run + 1}/{runs}"):
            cache = _cache_with_shared_inputs(work, shared)
            caches.append(cache)
            wall, result = _quiet_build(BuildOptions(matrix_path, work / f"cold-{run}", cache))
            built = [o.job.unit for o in result.outcomes if o.status == "built"]
            floors.append(sum(per_unit.get(_series(u), serial.value) for u in built) / cores)
            walls.append(wall)
            units = len(built)
    ratio = _median([w / f for w, f in zip(walls, floors, strict=True)])
    figures.append(Figure("cold build / compile floor", ratio, "x", "<= 1.15", ratio <= 1.15,
                          {"wall_s": _median(walls), "floor_s": _median(floors), "units": units, "cores": cores,
                           "core_s_per_unit": _median(walls) * cores / units, "runs": runs,
                           "floor": "units x serial per-unit time of their series / cores"}))

    cache = caches[0]
    figures.append(bench_noop(matrix_path, work / "cold-0", cache, work, runs))

    with step("one touched source"):
        copy = _project_copy(matrix_path, work / "touched")
        program = load_matrix(copy).programs[0]
        source = copy.parent / program.source
        source.write_text(source.read_text() + "\n/* bench: touched */\n")
        wall, result = _quiet_build(BuildOptions(copy, work / "touched-build", cache))
        rebuilt = [o.job.unit.id for o in result.outcomes if o.status == "built"]
        expected = [o.job.unit.id for o in result.outcomes if o.job.unit.program.name == program.name]
    figures.append(Figure(f"touched {program.source}: units rebuilt", len(rebuilt), "units",
                          f"== {len(expected)} ({program.name} only)", sorted(rebuilt) == sorted(expected),
                          {"seconds": wall}))

    figures += bench_scaling(matrix_path, shared, work, runs, scaling)
    return figures


def bench_wheel(build_dir: Path, work: Path) -> list[Figure]:
    from .bundle import bundle_wheels

    with step("bundle"), console.capture():
        wheels = bundle_wheels([build_dir], work / "dist")
    index = json.loads((build_dir / "index.json").read_text())
    raw = sum(u["size"] for u in index["units"])
    size = sum(Path(w).stat().st_size for w in wheels)
    share = size / raw
    return [Figure("wheel size / raw objects", share * 100, "%", "<= 15%", share <= 0.15,
                   {"wheel_bytes": size, "raw_bytes": raw, "wheels": [Path(w).name for w in wheels]})]


def _loader_venv(wheel_dir: Path, work: Path) -> Path:
    """A fresh venv with this arch's wheel installed (once per bench), as a host would run it."""
    venv = work / "venv"
    if (venv / "bin/hids-bytecode").exists():
        return venv
    wheels = sorted(str(w) for w in wheel_dir.glob(f"*{platform.machine()}.whl"))
    if not wheels:
        raise BuildError(f"no {platform.machine()} wheel in {wheel_dir}: run the wheel section or `invoke build-all`")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", wheels[-1]], check=True)
    return venv


def _import_times(python: Path, args: list[str]) -> dict[str, float]:
    """Self time in ms of each module `python -X importtime *args` imports."""
    err = subprocess.run([str(python), "-X", "importtime", *args], capture_output=True, text=True).stderr
    times = {}
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].split(":")[-1].strip().isdigit():
            times[parts[2].strip()] = int(parts[0].split(":")[-1]) / 1e3
    return times


def _import_profile(venv: Path, argv: list[str], runs: int = 5) -> dict[str, float]:
    """Where a cold start goes: interpreter start, then the imports it adds (minimum self time over
    `runs`, in ms, from -X importtime): the loader's own modules, all, the costliest by name."""
    python = venv / "bin/python"
    start = _median(_command_seconds([str(python), "-c", "pass"], 10)) * 1e3
    startup = set(_import_times(python, ["-c", "pass"]))  # counted in the interpreter's start
    best: dict[str, float] = {}
    for _ in range(runs):
        for name, own in _import_times(python, argv).items():
            if name not in startup:
                best[name] = min(best.get(name, own), own)
    ours = sum(v for k, v in best.items() if k.split(".")[0] == "hids_bytecode")
    top = dict(sorted(best.items(), key=lambda kv: -kv[1])[:8])
    return {"interpreter_ms": start, "imports_ms": sum(best.values()), "loader_modules_ms": ours,
            **{f"import {k} ms": v for k, v in top.items()}}


def bench_loader(wheel_dir: Path, work: Path, calls: int) -> list[Figure]:
    """Loader figures from the wheel installed in a fresh venv, as a host would run it."""
    venv = _loader_venv(wheel_dir, work)
    probe = (
        "import json,time,statistics\n"
        "from hids_bytecode import api\n"
        "from hids_bytecode.hostinfo import gather\n"
        "from hids_bytecode.manifest import load_manifest\n"
        "s=time.perf_counter(); facts=gather(); g=time.perf_counter()-s\n"
        "s=time.perf_counter(); m=load_manifest(); lm=time.perf_counter()-s; t=[]\n"
        f"for _ in range({calls}):\n"
        "    s=time.perf_counter(); api.choose('file', facts, manifest=m); t.append(time.perf_counter()-s)\n"
        "t.sort(); print(json.dumps({'median': statistics.median(t), 'p99': t[min(len(t)-1, round(0.99*(len(t)-1)))],"
        " 'gather': g, 'manifest': lm}))\n"
    )
    out = subprocess.run([str(venv / "bin/python"), "-c", probe], check=True, capture_output=True, text=True).stdout
    select = json.loads(out)
    select_argv = [str(venv / "bin/hids-bytecode"), "select", "--json"]
    facts = json.loads(subprocess.run(select_argv, check=True, capture_output=True, text=True).stdout)["facts"]
    cached = "cached for this boot" in facts["syscall_wrapper"]["source"]  # the run above filled it (root)
    # The floor of any cold select: the interpreter with the modules it cannot do without (json for
    # the manifest and the output, hashlib for the objects' sha256, pathlib for the API's paths),
    # timed interleaved with select so that load swings touch both alike.
    floor_argv = [str(venv / "bin/python"), "-c", "import json, hashlib, pathlib"]
    cold, floor = [], []
    for _ in range(20):
        cold += _command_seconds(select_argv, 1)
        floor += _command_seconds(floor_argv, 1)
    profile = _import_profile(venv, select_argv)
    # What is neither the interpreter nor an import: the manifest's parse (its first, cold, parse in
    # a process beside it), facts, the chosen objects read and hashed, the output, the exit.
    rest = _median(cold) * 1e3 - profile["interpreter_ms"] - profile["imports_ms"]
    load_probe = (
        "import json,time\n"
        "from hids_bytecode import api\n"
        "res={}\n"
        "for program in ('process', 'file', 'network', 'kernel'):\n"
        "    s=time.perf_counter(); api.load(program); res[program]=time.perf_counter()-s; api.unload(program)\n"
        "print(json.dumps(res))\n"
    )
    loads = json.loads(subprocess.run([str(venv / "bin/python"), "-c", load_probe], check=True,
                                      capture_output=True, text=True).stdout)
    figures = [
        Figure(f"select() in-process, median of {calls}", select["median"] * 1e3, "ms", "< 5 ms",
               select["median"] < 0.005, {"p99_ms": select["p99"] * 1e3, "host_facts_once_ms": select["gather"] * 1e3}),
        Figure("hids-bytecode select --json (cold process), median of 20", _median(cold) * 1e3, "ms", "<= 50 ms",
               _median(cold) <= 0.050, {"min_ms": min(cold) * 1e3, "stdlib_floor_ms": _median(floor) * 1e3,
                                        "facts_cache": "hit" if cached else "not used",
                                        **profile, "rest_ms": rest, "manifest_parse_ms": select["manifest"] * 1e3}),
    ]
    figures += [Figure(f"load+attach {name}", seconds * 1e3, "ms") for name, seconds in sorted(loads.items())]
    return figures


def _events_probe(venv: Path, work: Path, *args: str) -> dict[str, Any]:
    loadgen = work / "loadgen"
    if not loadgen.exists():
        subprocess.run(["gcc", "-O2", "-o", str(loadgen), str(ROOT / "hidsbuild" / "loadgen.c")], check=True)
    env = {**os.environ, "HIDS_BYTECODE_PIN_ROOT": f"/sys/fs/bpf/hids-bench-{os.getpid()}"}
    out = subprocess.run([str(venv / "bin/python"), str(ROOT / "hidsbuild" / "events_probe.py"), args[0],
                          str(loadgen), *args[1:]], check=True, capture_output=True, text=True, env=env).stdout
    return dict(json.loads(out))


def bench_events(wheel_dir: Path, work: Path, seconds: float = 5.0) -> list[Figure]:
    """The event path of the installed wheel on this kernel (root): the file family's openat
    tracepoint fed by hidsbuild/loadgen.c on CPU 1, the reader on CPU 0. Ceilings are events per
    CPU-second of the API (poll, drain, freeing the records: what one core decodes; the reader
    process's whole CPU, its checks included, beside it) or of watch, with wall rate, loss and
    the generator's own count beside them; `profile` splits a record's CPU time into ring read, unpack, the records
    (or JSON lines) with merge and drain, and the write to a pipe (events_probe.profile)."""
    if os.geteuid() != 0:
        raise BuildError("the events section loads eBPF programs: run the bench as root")
    venv = _loader_venv(wheel_dir, work)
    figures: list[Figure] = []
    with step("events: API at saturation (mmap and libbpf readers), watch to a pipe, 50k/s sustained, profile"):
        runs = {reader: _events_probe(venv, work, "api", str(seconds), "0", reader) for reader in ("mmap", "libbpf")}
        watch = _events_probe(venv, work, "watch", str(seconds), "0")
        paced = _events_probe(venv, work, "api", str(seconds * 2), "50000", "auto")
        profile = _events_probe(venv, work, "profile")
    for reader, run in runs.items():
        rate = run["decoded"] / run["api_cpu_s"]
        target = ("", None) if reader == "libbpf" else (">= 250k/s", rate >= 250_000)
        figures.append(Figure(f"events decoded by the API at saturation ({reader} reader), per API CPU-s",
                              rate, "ev/s", target[0], target[1],
                              {"per_reader_process_cpu_s": run["decoded"] / run["cpu_s"],
                               "wall_rate": run["decoded"] / run["wall_s"], "cpu_use": run["cpu_s"] / run["wall_s"],
                               "decoded": run["decoded"], "generator_opens": run["opens"], "dropped": run["dropped"],
                               "generator_events_read": run["ours"], "in_order": run["ours_in_order"]}))
    lines_rate = watch["lines"] / watch["cpu_s"]
    figures.append(Figure("watch JSON lines into a pipe at saturation, per watch CPU-s", lines_rate, "lines/s",
                          ">= 100k/s", lines_rate >= 100_000,
                          {"wall_rate": watch["lines"] / watch["wall_s"], "cpu_use": watch["cpu_s"] / watch["wall_s"],
                           "lines": watch["lines"], "loss_report_lines": watch["loss_lines"],
                           "generator_opens": watch["opens"], "generator_lines": watch["ours"]}))
    missing = paced["opens"] - paced["ours"]
    figures.append(Figure(f"sustained {paced['opens'] / (seconds * 2):.0f} opens/s for {seconds * 2:.0f} s: lost",
                          missing, "events", "== 0", missing == 0 and paced["dropped"] == 0,  # dropped: any process's
                          {"generator_opens": paced["opens"], "read": paced["ours"], "kernel_dropped": paced["dropped"],
                           "in_order": paced["ours_in_order"], "reader_cpu_use": paced["cpu_s"] / paced["wall_s"]}))
    figures.append(Figure("event path profile: us of reader CPU per record, API (dicts)", profile["records_us"], "us",
                          detail={"ring_read_us": profile["read_us"],
                                  "unpack_us": profile["unpack_us"] - profile["read_us"],
                                  "dicts_merge_drain_us": profile["records_us"] - profile["unpack_us"],
                                  "records": profile["records_records"],
                                  "libbpf_reader_us": profile["libbpf_records_us"]}))
    figures.append(Figure("event path profile: us of watch CPU per JSON line", profile["lines_written_us"], "us",
                          detail={"ring_read_us": profile["read_us"],
                                  "unpack_us": profile["unpack_us"] - profile["read_us"],
                                  "lines_merge_drain_us": profile["lines_us"] - profile["unpack_us"],
                                  "write_us": profile["lines_written_us"] - profile["lines_us"],
                                  "dicts_then_json_dumps_us": profile["records_json_us"]}))
    return figures


def bench_discover(runs: int) -> list[Figure]:
    """kernels.discover over the default suites and both arches: signed indexes fetched and parsed."""
    from hids_bytecode.arches import ARCHES

    from .discover import DEFAULT_SUITES, discover

    times, found = [], 0
    for run in range(runs):
        with step(f"kernels.discover {run + 1}/{runs}"):
            start = time.perf_counter()
            found = len(discover(DEFAULT_SUITES, list(ARCHES)))
            times.append(time.perf_counter() - start)
    return [Figure(f"kernels.discover ({len(DEFAULT_SUITES)} suites x {len(ARCHES)} arches)", _median(times), "s",
                   "< 20 s", _median(times) < 20.0, {"kernels": found, "runs": runs, "min_s": min(times)})]


def render(figures: list[Figure]) -> Table:
    table = Table(title=f"invoke bench on {platform.node()} ({os.cpu_count()} cores, {platform.machine()})")
    for col in ("figure", "value", "target", "", "detail"):
        table.add_column(col)
    for f in figures:
        mark = "" if f.ok is None else ("[green]ok[/]" if f.ok else "[red]MISSED[/]")
        value = f"{f.value:.3g} {f.unit}" if isinstance(f.value, float) else f"{f.value} {f.unit}"
        detail = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in f.detail.items())
        table.add_row(f.name, value, f.target, mark, detail)
    return table


def run_bench(matrix_path: Path, cache_dir: Path, dist: Path, runs: int, calls: int, scaling: list[int],
              sections: set[str]) -> list[Figure]:
    figures: list[Figure] = []
    work = Path(tempfile.mkdtemp(prefix="hids-bench-"))
    try:
        parts: list[tuple[str, Callable[[], list[Figure]]]] = [
            ("build", lambda: bench_build(matrix_path, cache_dir, work, runs, scaling)),
            ("wheel", lambda: bench_wheel(work / "cold-0", work)),
            ("loader", lambda: bench_loader(work / "dist" if (work / "dist").exists() else dist, work, calls)),
            ("events", lambda: bench_events(work / "dist" if (work / "dist").exists() else dist, work)),
            ("discover", lambda: bench_discover(runs)),
        ]
        for name, part in parts:
            if name in sections:
                figures += part()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "machine": {"node": platform.node(), "cores": os.cpu_count(), "arch": platform.machine(),
                    "kernel": platform.release()},
        "figures": [f.__dict__ for f in figures],
    }
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "bench.json").write_text(json.dumps(report, indent=1) + "\n")
    console.print(render(figures))
    return figures
