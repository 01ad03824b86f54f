"""invoke tasks of hids-bytecode. `invoke --list` describes them; `invoke --help TASK` shows options."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

from invoke import Collection, Exit, task

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from hidsbuild.errors import BuildError  # noqa: E402

DEFAULT_MATRIX = ROOT / "kernels.yaml"
DEFAULT_BUILD = ROOT / "build"
DEFAULT_DIST = ROOT / "dist"
DEFAULT_CACHE = ROOT / ".cache"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so that containers and scratch files are removed on the way out."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated()


def _reported(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an expected failure into one line on stderr and its own exit code; Ctrl-C exits 130 and
    SIGTERM 143, both after stopping what the task started."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except BuildError as exc:
            raise Exit(f"error: {exc}", code=exc.exit_code) from None
        except _Terminated:
            raise Exit("terminated: containers stopped, nothing half-written was kept", code=143) from None
        except KeyboardInterrupt:
            raise Exit("interrupted: containers stopped, nothing half-written was kept", code=130) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return wrapper


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise Exit(f"error: --shard takes K/N (e.g. 2/4), not {text!r}", code=2) from None
    if not 1 <= k <= n:
        raise Exit(f"error: --shard {text}: K must be between 1 and N", code=2)
    return k, n


@task(
    help={
        "matrix": "kernels.yaml to build (default: the repository's)",
        "build_dir": "where objects, stitched sources and index.json go (default: build/)",
        "dist": "where the wheel goes (default: dist/)",
        "cache_dir": "headers, object cache and apt state (default: .cache/)",
        "shard": "build only slice K/N of the matrix (whole kernels), e.g. 1/4; skips the wheel",
        "jobs": "parallel compiles per container (default: all cores)",
        "no_bundle": "stop after build/ and skip the wheel",
        "rebuild_toolchain": "build the toolchain image anew without docker's layer cache (same pins: the objects "
                             "must come out byte-identical)",
        "sign_key": "Ed25519 private key (PEM) that signs each wheel's manifest (default: the path in "
                    "$HIDS_SIGNING_KEY; neither: unsigned, and the closing output says so)",
    }
)
@_reported
def build_all(c, matrix=str(DEFAULT_MATRIX), build_dir=str(DEFAULT_BUILD), dist=str(DEFAULT_DIST),
              cache_dir=str(DEFAULT_CACHE), shard=None, jobs=0, no_bundle=False, rebuild_toolchain=False,
              sign_key=None):
    """Compile every program x kernel x variant in the toolchain container, validate, and bundle the wheel."""
    from hidsbuild.pipeline import BuildOptions
    from hidsbuild.pipeline import build_all as run

    # docker takes a relative bind-mount source for a named volume: hand it absolute paths.
    run(BuildOptions(Path(matrix).resolve(), Path(build_dir).resolve(), Path(cache_dir).resolve(),
                     _parse_shard(shard), jobs or None, bool(rebuild_toolchain)))
    if not (shard or no_bundle):
        bundle(c, build_dir=build_dir, dist=dist, sign_key=sign_key)


@task(
    help={
        "build_dir": "build output to bundle (default: build/)",
        "dist": "where the wheel goes (default: dist/)",
        "merge": "bundle these shard build directories together instead (repeatable)",
        "sign_key": "Ed25519 private key (PEM) that signs each wheel's manifest (default: the path in "
                    "$HIDS_SIGNING_KEY; neither: unsigned, and the closing output says so)",
    },
    iterable=["merge"],
)
@_reported
def bundle(c, build_dir=str(DEFAULT_BUILD), dist=str(DEFAULT_DIST), merge=None, sign_key=None):
    """Package the loader and every built object into one wheel per arch in dist/, with provenance, signed."""
    from hidsbuild.bundle import bundle_wheels
    from hidsbuild.signing import resolve_key_path

    sources = [Path(m) for m in merge] if merge else [Path(build_dir)]
    bundle_wheels(sources, Path(dist), sign_key=resolve_key_path(sign_key))


@task(
    help={
        "out": "directory for <name>.key (private, 0600) and <name>.pub (public); existing keys are never overwritten",
        "name": "file name stem (default: hids-build-<date>, so rotated keys sit side by side)",
    }
)
@_reported
def generate(c, out, name=None):
    """Make a new Ed25519 build key pair: the .key goes to CI as a secret, the .pub to every host's trust dir."""
    import datetime

    from hidsbuild.signing import generate_keys, load_signing_key

    stem = name or f"hids-build-{datetime.date.today():%Y%m%d}"
    private, public = generate_keys(Path(out), stem)
    print(f"private key {private} (0600: a CI secret, never on hosts)")
    print(f"public key  {public} (copy to /etc/hids-bytecode/keys/ on hosts)")
    print(f"fingerprint {load_signing_key(private).fingerprint}")


@task(
    help={
        "suite": "Debian suite to crawl (repeatable; default: bullseye..sid incl. security/backports)",
        "arch": "x86_64 or aarch64 (repeatable; default: both)",
        "flavour": "kernel flavour: cloud (default), rt, or '' for the generic one",
        "newest": "only the newest kernel of each suite and arch whose packages the pool serves (HTTP HEAD)",
        "write": "refresh this kernels.yaml in place: new kernels added, versions updated, comments kept",
        "prune": "with --write: also remove the kernels the archive no longer serves (default: only report them)",
        "toolchain": "instead of kernels: the versions the toolchain suite serves of kernels.yaml's pinned "
                     "toolchain.packages; with --write, refresh those pins in place",
    },
    iterable=["suite", "arch"],
)
@_reported
def discover(c, suite=None, arch=None, flavour="cloud", newest=False, write=None, prune=False, toolchain=False):
    """List the kernel releases Debian's archive serves now (signed Packages indexes), or refresh a kernels.yaml."""
    import re

    from hids_bytecode.arches import ARCHES

    from hidsbuild import discover as crawler
    from hidsbuild.kernels import load_matrix

    if toolchain:
        _discover_toolchain(Path(write) if write else DEFAULT_MATRIX, bool(write))
        return

    arches = list(arch or ARCHES)
    unknown = [a for a in arches if a not in ARCHES]
    if unknown:
        raise Exit(f"error: unknown arch {unknown[0]!r} (expected one of {', '.join(ARCHES)})", code=2)
    if prune and not write:
        raise Exit("error: --prune needs --write FILE", code=2)
    suites = list(suite or crawler.DEFAULT_SUITES)
    bad = [s for s in suites if not re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", s)]
    if bad or flavour not in ("cloud", "rt", ""):
        raise Exit(f"error: {bad[0]!r} is not a Debian suite name" if bad else
                   f"error: unknown flavour {flavour!r} (expected cloud, rt or '')", code=2)
    if write:
        load_matrix(Path(write))  # a broken file is reported before the crawl, not after
    served = crawler.discover(suites, arches, flavour)
    candidates = served
    if newest:  # the newest kernel whose packages the pool serves, not only the index
        candidates, notes = crawler.newest_served(served)
        for note in notes:
            print(note, file=sys.stderr)
    if not write:
        print(crawler.render_yaml(candidates), end="")
        return
    report = crawler.write_matrix(Path(write), served, candidates, suites, arches, flavour, prune)
    for s in report.added:
        print(f"added    {s.release} ({s.arch}) in {s.suite}, {s.version}")
    for s, old in report.updated:
        print(f"updated  {s.release} ({s.arch}) in {s.suite}: {old} -> {s.version}")
    for label in report.vanished:
        state = "pruned" if label in report.pruned else "kept: core builds from it" if label in report.kept_for_core \
            else "kept: --prune removes it"
        print(f"vanished {label} ({state})")
    if not (report.added or report.updated or report.pruned):
        print(f"{write}: up to date")


def _discover_toolchain(matrix: Path, write: bool) -> None:
    import platform

    from hids_bytecode.arches import ARCHES

    from hidsbuild import discover as crawler
    from hidsbuild.kernels import load_matrix

    tc = load_matrix(matrix).toolchain
    if not tc.packages:
        raise Exit(f"error: {matrix}: toolchain has no `packages:` to refresh; list the packages to pin there", code=2)
    served = crawler.served_toolchain(tc, ARCHES[platform.machine()].debian)
    if not write:
        print("  packages:")
        for name, _ in tc.packages:
            print(f'    {name}: "{served[name]}"' if name in served else f"    # {name}: not served by {tc.suite}")
        return
    changes = crawler.write_toolchain_pins(matrix, served)
    for name, old, new in changes:
        print(f"updated  {name}: {old} -> {new}")
    print(f"{matrix}: toolchain pins up to date" if not changes else
          f"{matrix}: {len(changes)} pin(s) refreshed; the next build makes a new image and rebuilds every object")


@task(
    help={
        "matrix": "kernels.yaml to measure (default: the repository's)",
        "cache_dir": "where headers and the toolchain state are shared from (default: .cache/)",
        "dist": "bench.json goes here (default: dist/)",
        "runs": "runs per figure; medians are reported (default: 3)",
        "calls": "in-process select() calls (default: 1000)",
        "scaling": "kernel counts for the scaling figure, comma-separated; counts beyond the matrix add "
                   "kernels-all.yaml's (served ones), newest first (default: 1,2,4,8,16)",
        "only": "comma-separated sections to run: build, wheel, loader, events, discover (default: all; loader "
                "and events without wheel use the newest wheel in --dist)",
    }
)
@_reported
def bench(c, matrix=str(DEFAULT_MATRIX), cache_dir=str(DEFAULT_CACHE), dist=str(DEFAULT_DIST), runs=3, calls=1000,
          scaling="1,2,4,8,16", only="build,wheel,loader,events,discover"):
    """Measure build throughput, caching, wheel size and loader latency; print figures and write dist/bench.json."""
    from hidsbuild.bench import run_bench

    run_bench(Path(matrix), Path(cache_dir), Path(dist), int(runs), int(calls),
              [int(n) for n in scaling.split(",") if n], set(only.split(",")))


@task(
    help={
        "matrix": "kernels.yaml whose kernels to boot (default: the repository's)",
        "dist": "where the wheels are read and verify.json / verify.txt are written (default: dist/)",
        "cache_dir": "kernel images, guest initramfs and apt state (default: .cache/)",
        "kernel": "verify only this kernel release (repeatable; default: every kernel of the matrix)",
        "timeout": "seconds one VM may run before it is reported as not booting (default: 300)",
        "wheel": "verify this wheel instead of the newest per arch in dist/ (repeatable, one per arch)",
        "strict": "exit non-zero when any kernel is unproved (no image served), not only when one fails: for CI gates",
        "shard": "verify only slice K/N of the kernels (whole kernels, sorted by release, as build-all --shard)",
        "jobs": "guests booted at once, one vCPU each (default: one per core)",
        "merge": "boot nothing: join these shards' verify.json (files or dirs; repeatable) into dist/verify.json, "
                 "verify.txt and compat.html; kernels of --matrix in no shard are unproved",
    },
    iterable=["kernel", "wheel", "merge"],
)
@_reported
def verify(c, matrix=str(DEFAULT_MATRIX), dist=str(DEFAULT_DIST), cache_dir=str(DEFAULT_CACHE), kernel=None,
           timeout=300, wheel=None, strict=False, shard=None, jobs=0, merge=None):
    """Boot each kernel under qemu (TCG) with the wheel inside; prove every object loads, attaches and reports events;
    write dist/verify.json, verify.txt and compat.html."""
    from hidsbuild.verify.run import VerifyOptions, merge_verify, run_verify

    if merge:
        if kernel or wheel or shard:
            raise Exit("error: --merge joins finished shards: it takes no --kernel, --wheel or --shard", code=2)
        merge_verify([Path(m) for m in merge], Path(matrix), Path(dist), bool(strict))
        return
    run_verify(VerifyOptions(Path(matrix), Path(dist), Path(cache_dir), tuple(kernel or ()), float(timeout),
                             tuple(Path(w) for w in wheel or ()), bool(strict), _parse_shard(shard), int(jobs)))


kernels = Collection("kernels")
kernels.add_task(discover)

keys = Collection("keys")
keys.add_task(generate)

ns = Collection()
ns.add_task(build_all)
ns.add_task(bundle)
ns.add_task(bench)
ns.add_task(verify)
ns.add_collection(kernels)
ns.add_collection(keys)
