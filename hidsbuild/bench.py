"""invoke bench: build throughput, caching, wheel size and loader latency, as printed figures.

The machine is shared and noisy, so every figure is a median of several runs and every target
is a ratio or count measured in the same run. Figures that miss their target stay in the
output, marked. Inputs (kernel headers, toolchain image) are warmed first and shared: the
figures are about compiling, caching and loading, not about the network.
"""

from __future__ import annotations

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
from rich.table import Table

from .kernels import load_matrix
from .pipeline import BuildOptions, BuildResult, build_all
from .report import console, step

__all__ = ["Figure", "run_bench"]

ROOT = Path(__file__).resolve().parent.parent
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


def _project_copy(matrix_path: Path, dest: Path, kernels: int | None = None) -> Path:
    """A copy of the project's sources and matrix, optionally cut to its first N kernels."""
    shutil.copytree(ROOT / "bpf", dest / "bpf")
    doc = yaml.safe_load(matrix_path.read_text())
    if kernels is not None:
        doc["kernels"] = doc["kernels"][:kernels]
        doc.pop("core", None)
    (dest / "kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest / "kernels.yaml"


def bench_build(matrix_path: Path, shared: Path, work: Path, runs: int, scaling: list[int]) -> list[Figure]:
    figures: list[Figure] = []
    cores = os.cpu_count() or 1
    with step("warm inputs (headers, toolchain image, vmlinux.h)"):
        warm_cache = _cache_with_shared_inputs(work, shared)
        _quiet_build(BuildOptions(matrix_path, work / "warm-build", warm_cache))

    walls, floors, units = [], [], 0
    for run in range(runs):
        with step(f"cold build {run + 1}/{runs}"):
            cache = _cache_with_shared_inputs(work, shared)
            wall, result = _quiet_build(BuildOptions(matrix_path, work / f"cold-{run}", cache))
            floors.append(sum(o.compile_ns for o in result.outcomes) / 1e9 / cores)
            walls.append(wall)
            units = len(result.outcomes)
    ratio = _median([w / f for w, f in zip(walls, floors)])
    figures.append(Figure("cold build / compile floor", ratio, "x", "<= 1.25", ratio <= 1.25,
                          {"wall_s": _median(walls), "floor_s": _median(floors), "units": units, "cores": cores,
                           "runs": runs}))

    build_dir = work / "cold-0"
    cache = next(p for p in sorted(work.glob("cache-*")) if p != warm_cache)
    argv = [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "build-all", "--no-bundle",
            "--matrix", str(matrix_path), "--build-dir", str(build_dir), "--cache-dir", str(cache)]
    with step("no-op rebuild"):
        noop = _command_seconds(argv, max(runs, 5))
    figures.append(Figure("no-op rebuild (invoke build-all)", _median(noop), "s", "< 1 s", _median(noop) < 1.0,
                          {"runs": len(noop), "min_s": min(noop)}))

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

    for count in scaling:
        with step(f"scaling: cold build of {count} kernel(s)"):
            copy = _project_copy(matrix_path, work / f"scale-{count}", count)
            times = []
            for _ in range(runs):
                wall, result = _quiet_build(BuildOptions(copy, work / f"scale-{count}-build",
                                                         _cache_with_shared_inputs(work, shared)))
                times.append(wall)
        figures.append(Figure(f"cold build of {count} kernel(s)", _median(times), "s",
                              detail={"units": len(result.outcomes), "runs": runs}))
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


def bench_loader(wheel_dir: Path, work: Path, calls: int) -> list[Figure]:
    """Loader figures from the wheel installed in a fresh venv, as a host would run it."""
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    wheels = sorted(str(w) for w in wheel_dir.glob(f"*{platform.machine()}.whl"))
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", *wheels], check=True)
    probe = (
        "import json,time,statistics\n"
        "from hids_bytecode import api\n"
        "from hids_bytecode.hostinfo import gather\n"
        "from hids_bytecode.manifest import load_manifest\n"
        "s=time.perf_counter(); facts=gather(); g=time.perf_counter()-s\n"
        "m=load_manifest(); t=[]\n"
        f"for _ in range({calls}):\n"
        "    s=time.perf_counter(); api.choose('file', facts, manifest=m); t.append(time.perf_counter()-s)\n"
        "t.sort(); print(json.dumps({'median': statistics.median(t), 'p99': t[min(len(t)-1, round(0.99*(len(t)-1)))],"
        " 'gather': g}))\n"
    )
    out = subprocess.run([str(venv / "bin/python"), "-c", probe], check=True, capture_output=True, text=True).stdout
    select = json.loads(out)
    cold = _command_seconds([str(venv / "bin/hids-bytecode"), "select", "--json"], 10)
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
        Figure("hids-bytecode select (cold process), median of 10", _median(cold) * 1e3, "ms", "< 150 ms",
               _median(cold) < 0.150, {"min_ms": min(cold) * 1e3}),
    ]
    figures += [Figure(f"load+attach {name}", seconds * 1e3, "ms") for name, seconds in sorted(loads.items())]
    return figures


def bench_discover(runs: int) -> list[Figure]:
    """kernels.discover over the default suites and both arches: signed indexes fetched and parsed."""
    from .discover import DEFAULT_SUITES, discover
    from .kernels import ARCHES

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
            ("loader", lambda: bench_loader(work / "dist", work, calls)),
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
