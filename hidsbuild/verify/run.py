"""`invoke verify`: for each kernel of the matrix, boot its own image with the wheel installed in
the guest, and collect what the guest's loader checks report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..apt import PrivateApt
from ..errors import ConfigError, HeadersUnavailable, VerifyFailed
from ..kernels import Kernel, load_matrix
from ..report import console, step
from .images import fetch_image
from .matrix import KernelResult, failures, render_table, unproved, write_json, write_text
from .rootfs import initramfs
from .vm import boot

__all__ = ["VerifyOptions", "find_wheels", "run_verify"]


@dataclass(frozen=True)
class VerifyOptions:
    matrix: Path
    dist: Path
    cache: Path
    releases: tuple[str, ...] = ()  # empty: every kernel of the matrix
    timeout: float = 300.0
    wheels: tuple[Path, ...] = ()  # empty: the newest wheel per arch in dist/
    strict: bool = False  # a kernel left unproved (no image served) fails the run too


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


def _expected_units(site: Path, kernel: Kernel) -> list[str]:
    manifest = json.loads((site / "hids_bytecode" / "data" / "manifest.json").read_text())
    return sorted(e["unit"] for e in manifest["objects"]
                  if e["kind"] == "exact" and e["kernel"].get("release") == kernel.release)


def _selected(kernels: tuple[Kernel, ...], releases: tuple[str, ...], matrix: Path) -> list[Kernel]:
    if not releases:
        return list(kernels)
    known = {k.release for k in kernels}
    unknown = [r for r in releases if r not in known]
    if unknown:
        raise ConfigError(str(matrix), None, "--kernel", f"{unknown[0]} is not in the matrix (has: {', '.join(sorted(known))})")
    return [k for k in kernels if k.release in releases]


def _verify_kernel(kernel: Kernel, apt: PrivateApt, sites: dict[str, Path], opts: VerifyOptions) -> KernelResult:
    result = KernelResult.of(kernel)
    site = sites.get(kernel.arch)
    if site is None:
        result.status, result.reason = "no wheel", f"no {kernel.arch} wheel in {opts.dist} (run `invoke build-all`)"
        return result
    expected = _expected_units(site, kernel)
    if not expected:
        result.status, result.reason = "failed", f"the {kernel.arch} wheel has no object built for {kernel.release}"
        return result
    try:
        image = fetch_image(apt, kernel, opts.cache)
    except HeadersUnavailable as exc:
        result.status, result.reason = "no image", str(exc)
        return result
    missing = image.missing_builtins(kernel.arch)
    if missing:
        result.status = "boot failed"
        result.reason = f"needs built in, but the initramfs carries no modules: {', '.join(missing)}"
        return result
    with tempfile.TemporaryDirectory(prefix="hids-initrd-") as tmp:
        initrd = initramfs(site, kernel.arch, opts.cache, Path(tmp) / "initrd.cpio.gz")
        run = boot(kernel.arch, image.vmlinuz, initrd, opts.timeout)
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
        missing = sorted(set(expected) - {r["unit"] for r in result.rows})
        if missing:
            result.status, result.reason = "failed", f"not checked in the guest: {', '.join(missing)}"
    result.settle()
    return result


def run_verify(opts: VerifyOptions) -> list[KernelResult]:
    """Verify each selected kernel in its own VM; write dist/verify.json and dist/verify.txt and
    raise VerifyFailed if any kernel, object or program failed (with `strict`, or was left unproved)."""
    matrix = load_matrix(opts.matrix)
    kernels = _selected(matrix.kernels, opts.releases, opts.matrix)
    wheels = find_wheels(opts.dist, opts.wheels)
    if not wheels:
        raise VerifyFailed(f"no hids_bytecode wheel in {opts.dist}: run `invoke build-all` first")
    sites = {arch: _site(wheel, opts.cache) for arch, wheel in wheels.items()}
    # apt reads relative Dir:: options against /, not the working directory.
    apt = PrivateApt(opts.cache.resolve() / "verify" / "apt", [k.suite for k in kernels], [k.deb_arch for k in kernels])
    results = []
    for kernel in kernels:
        with step(f"verify {kernel.release} ({kernel.arch})"):
            results.append(_verify_kernel(kernel, apt, sites, opts))
            last = results[-1]
            console.print(f"  {last.status}" + (f": {last.reason}" if last.reason else "") + f" (guest {last.uname or '-'})",
                          markup=False)
    write_json(results, opts.dist / "verify.json")
    write_text(results, opts.dist / "verify.txt")
    console.print(render_table(results))
    for result in unproved(results):
        console.print(f"[yellow]not proved[/] {result.release}: {result.reason}", soft_wrap=True)
    bad = failures(results) + (unproved(results) if opts.strict else [])
    if bad:
        raise VerifyFailed(f"{len(bad)} of {len(results)} kernel(s) failed{' or were unproved' if opts.strict else ''} "
                           "verification "
                           f"({', '.join(f'{r.release}: {r.status}' for r in bad)}); see {opts.dist / 'verify.txt'}")
    return results
