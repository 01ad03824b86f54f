"""`invoke verify`: for each kernel of the matrix, boot its own image with the wheel installed in
the guest, and collect what the guest's loader checks report.

Images and initramfs are prepared one kernel after the other (apt and the cached guest base are
shared), then the guests boot side by side, one vCPU each, as many at once as there are cores.
A matrix too large for one machine is cut with `shard` (whole kernels, as build-all does) and the
shards' verify.json files are joined with `merge_verify`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..apt import PrivateApt
from ..errors import ConfigError, PackageUnavailable, VerifyFailed
from ..kernels import Kernel, load_matrix
from ..report import console, step
from .images import KernelImage, fetch_image
from .page import write_page
from .results import (
    NOT_RUN,
    KernelResult,
    failures,
    merge_results,
    read_json,
    render_table,
    unproved,
    write_json,
    write_text,
)
from .rootfs import initramfs
from .vm import boot, stop_all

# qemu 7.2's TCG corrupts EFLAGS after SLUB's cmpxchg16b: with CMPXCHG16B (hids_bytecode.arches),
# 6.12.95+deb12 oopsed before its /init in two boots of three. Any guest that dies before /init ran
# (the line templates/guest-init.sh.j2 prints first) has run none of the checks and is booted again,
# each crash kept in the result; one that died later is never retried.
BOOT_ATTEMPTS = 5
GUEST_BOOTED = "hids-verify: booted"

__all__ = ["VerifyOptions", "find_wheels", "merge_verify", "run_verify", "shard_kernels"]


@dataclass(frozen=True)
class VerifyOptions:
    matrix: Path
    dist: Path
    cache: Path
    releases: tuple[str, ...] = ()  # empty: every kernel of the matrix
    timeout: float = 300.0
    wheels: tuple[Path, ...] = ()  # empty: the newest wheel per arch in dist/
    strict: bool = False  # a kernel left unproved (no image served) fails the run too
    shard: tuple[int, int] | None = None  # verify only slice K/N of the selected kernels
    jobs: int = 0  # guests booted at once; 0: one per core


def find_wheels(dist: Path, explicit: tuple[Path, ...] = ()) -> dict[str, Path]:
    """arch -> wheel: the ones named, else the newest hids_bytecode wheel per arch in dist/."""
    found: dict[str, Path] = {}
    candidates = list(explicit) or sorted(dist.glob("hids_bytecode-*.whl"), key=lambda p: p.stat().st_mtime)
    for wheel in candidates:
        if not wheel.is_file():
            raise VerifyFailed(f"{wheel}: no such wheel")
        arch = next((a for a in ("x86_64", "aarch64") if wheel.name.endswith(f"_{a}.whl")), None)
        if arch is None:
            raise VerifyFailed(f"{wheel}: not an x86_64 or aarch64 hids_bytecode wheel")
        found[arch] = wheel
    return found


def _site(wheel: Path, cache: Path) -> Path:
    """The wheel unpacked as pip would install it into site-packages, cached by its name."""
    dest = cache / "verify" / "site" / wheel.stem
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="hids-site-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp)
        os.replace(tmp, dest)
    except zipfile.BadZipFile as exc:
        raise VerifyFailed(f"{wheel}: not a wheel ({exc})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _manifest(site: Path) -> dict:
    return json.loads((site / "hids_bytecode" / "data" / "manifest.json").read_text())


def _expected_units(site: Path, kernel: Kernel) -> tuple[list[str], list[str]]:
    """The units the kernel's guest must report: (exact ones built for its release, CO-RE ones of
    its arch). CO-RE is what a host without an exact build falls back to, so it is proved on every
    kernel, not only on those that have no exact build."""
    objects = _manifest(site)["objects"]
    exact = sorted(e["unit"] for e in objects if e["kind"] == "exact" and e["kernel"].get("release") == kernel.release)
    core = sorted(e["unit"] for e in objects if e["kind"] == "core" and e["kernel"].get("arch") == kernel.arch)
    return exact, core


def _skipped_units(site: Path, kernel: Kernel) -> list[dict]:
    """The kernel's units the build skipped as unable to run there, with the reason (for the page)."""
    return [s for s in _manifest(site).get("skipped", []) if s["unit"].split("/")[1] == kernel.release]


def _selected(kernels: tuple[Kernel, ...], releases: tuple[str, ...], matrix: Path) -> list[Kernel]:
    if not releases:
        return list(kernels)
    known = {k.release for k in kernels}
    unknown = [r for r in releases if r not in known]
    if unknown:
        raise ConfigError(str(matrix), None, "--kernel",
                          f"{unknown[0]} is not in the matrix (has: {', '.join(sorted(known))})")
    return [k for k in kernels if k.release in releases]


def shard_kernels(kernels: list[Kernel], index: int, count: int) -> list[Kernel]:
    """Deterministic slice K/N by sorted release, matrix order kept, like build-all's shards."""
    releases = sorted(k.release for k in kernels)
    mine = {r for i, r in enumerate(releases) if i % count == index - 1}
    return [k for k in kernels if k.release in mine]


@dataclass
class _Guest:
    """A kernel ready to boot: its result so far, image and initramfs; `image` None: settled already."""

    result: KernelResult
    expected: list[str]  # exact units
    core: list[str] = field(default_factory=list)  # CO-RE units of the kernel's arch
    image: KernelImage | None = None
    initrd: Path | None = None


def _prepare(kernel: Kernel, apt: PrivateApt, sites: dict[str, Path], opts: VerifyOptions, scratch: Path) -> _Guest:
    guest = _Guest(KernelResult.of(kernel), [])
    result = guest.result
    site = sites.get(kernel.arch)
    if site is None:
        result.status, result.reason = "no wheel", f"no {kernel.arch} wheel in {opts.dist} (run `invoke build-all`)"
        return guest
    guest.expected, guest.core = _expected_units(site, kernel)
    result.skipped = _skipped_units(site, kernel)
    if not guest.expected:
        result.status, result.reason = "failed", f"the {kernel.arch} wheel has no object built for {kernel.release}"
        return guest
    try:
        image = fetch_image(apt, kernel, opts.cache)
    except PackageUnavailable as exc:
        result.status, result.reason = "no image", str(exc)
        return guest
    missing = image.missing_builtins(kernel.arch)
    if missing:
        result.status = "boot failed"
        result.reason = f"needs built in, but the initramfs carries no modules: {', '.join(missing)}"
        return guest
    if not guest.core and opts.strict:
        result.status, result.reason = "failed", (f"the {kernel.arch} wheel has no CO-RE object: the fallback of "
                                                  "hosts without an exact build would go unproved (--strict)")
        return guest
    guest.image = image
    guest.initrd = initramfs(site, kernel.arch, opts.cache, scratch / f"{kernel.release}.cpio.gz", image.module)
    return guest


def _boot(kernel: Kernel, guest: _Guest, opts: VerifyOptions) -> KernelResult:
    result = guest.result
    if guest.image is None or guest.initrd is None:
        return result
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        run = boot(kernel.arch, guest.image.vmlinuz, guest.initrd, opts.timeout)
        if run.result is not None or run.timed_out or GUEST_BOOTED in run.console or attempt == BOOT_ATTEMPTS:
            break
        result.boot_retries.append(run.problem)  # died before /init: qemu's TCG, not what is verified
    result.boot_seconds = round(run.seconds, 1)
    doc = run.result
    if doc is None:
        result.status, result.reason, result.console_tail = "boot failed", run.problem, run.console_tail()
        return result
    result.uname = doc.get("uname", "")
    result.rows = doc.get("rows", [])
    if doc.get("error"):
        result.status, result.reason = "failed", f"guest checks broke: {doc['error']}"
    elif result.uname != kernel.release:
        result.status, result.reason = "failed", f"the guest runs {result.uname}, not {kernel.release}"
    else:
        unchecked = _unchecked(guest, kernel.arch)
        if unchecked:
            result.status, result.reason = "failed", unchecked
    result.settle()
    return result


def _unchecked(guest: _Guest, arch: str) -> str:
    """Why the guest's rows fall short of what it had to check ('' when they do not): an exact
    unit of its kernel, or a CO-RE unit of its arch, with no row."""
    checked = {r["unit"] for r in guest.result.rows}
    missing, core = sorted(set(guest.expected) - checked), sorted(set(guest.core) - checked)
    notes = [f"not checked in the guest: {', '.join(missing)}"] if missing else []
    if core:
        notes.append(f"no CO-RE row for {arch} in the guest's result (CO-RE is proved on every kernel): "
                     f"{', '.join(core)}")
    return "; ".join(notes)


def run_verify(opts: VerifyOptions) -> list[KernelResult]:
    """Verify each selected kernel in its own VM; write dist/verify.json, verify.txt and compat.html
    and raise VerifyFailed if any kernel, object or program failed (with `strict`, or was left unproved)."""
    matrix = load_matrix(opts.matrix)
    kernels = _selected(matrix.kernels, opts.releases, opts.matrix)
    if opts.shard:
        kernels = shard_kernels(kernels, *opts.shard)
    if not kernels:
        raise VerifyFailed(f"shard {opts.shard[0]}/{opts.shard[1]} of {len(matrix.kernels)} kernel(s) is empty: "
                           "use fewer shards" if opts.shard else "no kernel selected")
    wheels = find_wheels(opts.dist, opts.wheels)
    if not wheels:
        raise VerifyFailed(f"no hids_bytecode wheel in {opts.dist}: run `invoke build-all` first")
    sites = {arch: _site(wheel, opts.cache) for arch, wheel in wheels.items()}
    # apt reads relative Dir:: options against /, not the working directory.
    served = [k for k in kernels if k.packaging.archive is not None]  # a local kernel has no image to fetch
    apt = PrivateApt(opts.cache.resolve() / "verify" / "apt", [k.suite for k in served], [k.deb_arch for k in served])
    jobs = max(1, min(opts.jobs or os.cpu_count() or 1, len(kernels)))
    with tempfile.TemporaryDirectory(prefix="hids-initrd-") as scratch:
        guests = []
        for kernel in kernels:
            with step(f"prepare {kernel.release} ({kernel.arch}): image and initramfs"):
                guests.append(_prepare(kernel, apt, sites, opts, Path(scratch)))
        with step(f"boot {sum(g.image is not None for g in guests)} guest(s), {jobs} at a time (one vCPU each)"), \
                ThreadPoolExecutor(max_workers=jobs) as pool:
            try:
                results = list(pool.map(_booted, kernels, guests, [opts] * len(kernels)))
            except BaseException:  # Ctrl-C, SIGTERM: no guest may outlive the run
                pool.shutdown(wait=False, cancel_futures=True)
                stop_all()
                raise
    shard = f"{opts.shard[0]}/{opts.shard[1]}" if opts.shard else None
    return _report(results, opts.dist, opts.strict, shard)


def _booted(kernel: Kernel, guest: _Guest, opts: VerifyOptions) -> KernelResult:
    result = _boot(kernel, guest, opts)
    console.print(f"  {kernel.release}: {result.status}" + (f": {result.reason}" if result.reason else "")
                  + f" (guest {result.uname or '-'}, {result.boot_seconds:g}s)", markup=False, soft_wrap=True)
    return result


def merge_verify(sources: list[Path], matrix_path: Path, dist: Path, strict: bool = False) -> list[KernelResult]:
    """Join the verify.json of shards (files, or directories holding one) into one result table in `dist`,
    in kernels.yaml's order; a kernel of the matrix that no shard verified is unproved."""
    matrix = load_matrix(matrix_path)
    docs = [read_json(p / "verify.json" if p.is_dir() else p) for p in sources]
    results = merge_results(docs, [k.release for k in matrix.kernels])
    seen = {r.release for r in results}
    for kernel in (k for k in matrix.kernels if k.release not in seen):
        missing = KernelResult.of(kernel)
        missing.status, missing.reason = NOT_RUN, "in no shard's verify.json (a shard that did not run or finish)"
        results.append(missing)
    rank = {k.release: i for i, k in enumerate(matrix.kernels)}
    results.sort(key=lambda r: rank.get(r.release, len(rank)))
    return _report(results, dist, strict, None)


def _report(results: list[KernelResult], dist: Path, strict: bool, shard: str | None) -> list[KernelResult]:
    write_json(results, dist / "verify.json", shard)
    write_text(results, dist / "verify.txt")
    write_page(results, dist / "compat.html")
    console.print(render_table(results))
    for result in unproved(results):
        console.print(f"[yellow]not proved[/] {result.release}: {result.reason}", soft_wrap=True)
    bad = failures(results) + (unproved(results) if strict else [])
    if bad:
        raise VerifyFailed(f"{len(bad)} of {len(results)} kernel(s) failed{' or were unproved' if strict else ''} "
                           "verification "
                           f"({', '.join(f'{r.release}: {r.status}' for r in bad)}); see {dist / 'verify.txt'}")
    return results
