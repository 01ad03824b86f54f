"""Kernel headers: the real Debian packages, fetched with apt and cached extracted on disk.

The cache is keyed by package, version and architecture; an entry appears only once fully
extracted and recorded file by file (extract into a temporary directory, record, then rename),
and every tree is checked against that record before a compile mounts it, so neither an
interrupted fetch nor a later edit leaves a tree a build would trust.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .apt import PackageRef, PrivateApt, fetch_all
from .artifacts import read_checked, record_tree, tree_intact, write_checked
from .errors import HeadersUnavailable
from .kernels import Kernel
from .owners import make_scratch, reap_scratch
from .report import ByteProgress

__all__ = ["KernelHeaders", "HeadersCache"]


@dataclass(frozen=True)
class KernelHeaders:
    """A kernel's extracted header packages and where its two source trees sit inside them."""

    kernel: Kernel
    packages: tuple[Path, ...]  # extracted package roots, in kernels.yaml order
    common: str  # tree paths relative to the package roots' common mount point
    flavour: str

    @property
    def identity(self) -> str:
        """What a compile depends on: the exact header package versions."""
        return ",".join(f"{p}={self.kernel.version}" for p in self.kernel.headers)

    def kernel_config(self) -> dict[str, str] | None:
        """The options set in the flavour tree's .config (the kernel's own build configuration),
        or None when the tree carries none."""
        index, rel = self.flavour.split("/", 1)
        try:
            text = (self.packages[int(index)] / rel / ".config").read_text(errors="replace")
        except FileNotFoundError:
            return None
        return dict(line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)


class HeadersCache:
    def __init__(self, root: Path, apt: PrivateApt | None) -> None:
        self.root = root
        self.apt = apt

    def _entry(self, ref: PackageRef) -> Path:
        return self.root / f"{ref.name}_{ref.version}_{ref.deb_arch}"

    def refs(self, kernel: Kernel) -> list[PackageRef]:
        # The -common package is arch: all; apt still resolves it under the kernel's arch.
        return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch) for name in kernel.headers]

    def _deb_record(self, ref: PackageRef) -> Path:
        return self.root / f"{ref.name}_{ref.version}_{ref.deb_arch}.deb.json"

    def packages(self, kernel: Kernel) -> list[dict[str, object]]:
        """The kernel's header packages as fetched: name, version, arch, and the size and sha256
        that apt's signed index gave and the download was checked against (for provenance)."""
        found = []
        for ref in self.refs(kernel):
            data = read_checked(self._deb_record(ref), f"package record {ref.name}")
            found.append(json.loads(data) if data else {"name": ref.name, "version": ref.version,
                                                         "arch": ref.deb_arch, "sha256": None})
        return found

    def missing(self, kernel: Kernel) -> list[PackageRef]:
        # A tree without the record of the package it came from cannot be accounted for in
        # provenance: fetched again like a missing one.
        return [ref for ref in self.refs(kernel) if not (self._entry(ref).is_dir() and self._deb_record(ref).is_file())]

    def check(self, kernels: list[Kernel]) -> None:
        """Hash every cached tree these kernels compile against; a tree that changed since it was
        extracted (cut, edited) is discarded so that `fetch` gets it again."""
        for ref in dict.fromkeys(ref for k in kernels for ref in self.refs(k)):
            tree_intact(self._entry(ref), f"headers {ref.name}={ref.version}")

    def fetch(self, kernels: list[Kernel]) -> None:
        """Download every missing package of these kernels at once (concurrently, sha256-checked),
        extract each, check it holds the trees a compile needs, and only then move it into the cache."""
        missing = list(dict.fromkeys(ref for k in kernels for ref in self.missing(k)))
        if not missing:
            return
        if self.apt is None:
            raise HeadersUnavailable(f"headers of {', '.join(k.release for k in kernels)} are not cached "
                                     "and no archive access was given")
        reap_scratch(self.root / ".scratch")
        tmp = make_scratch(self.root / ".scratch", "fetch")
        try:
            remotes = self.apt.locate(missing)
            unique = {r.filename: r.size for r in remotes}
            with ByteProgress(f"headers ({len(unique)} packages)", sum(unique.values())) as progress:
                debs = fetch_all(remotes, Path(tmp) / "debs", progress.advance)
            for ref, remote, deb in zip(missing, remotes, debs):
                staging = Path(tmp) / ref.name
                proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise HeadersUnavailable(f"{deb.name}: cannot be extracted: {proc.stderr.strip()}")
                if not any((staging / "usr/src").glob("linux-headers-*")):
                    raise HeadersUnavailable(f"{deb.name} holds no /usr/src/linux-headers-* tree")
                entry = self._entry(ref)
                record_tree(staging, entry)
                write_checked(self._deb_record(ref), json.dumps(
                    {"name": ref.name, "version": ref.version, "arch": ref.deb_arch, "suite": ref.suite,
                     "filename": remote.filename, "size": remote.size, "sha256": remote.sha256}, sort_keys=True).encode())
                try:
                    staging.rename(entry)
                except OSError:  # another build sharing this cache got there first; its tree is as good
                    shutil.rmtree(staging)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for kernel in kernels:
            self.describe(kernel)

    def describe(self, kernel: Kernel) -> KernelHeaders:
        roots = tuple(self._entry(ref) for ref in self.refs(kernel))
        common = flavour = None
        for index, root in enumerate(roots):
            for tree in sorted((root / "usr/src").glob("linux-headers-*")):
                rel = f"{index}/usr/src/{tree.name}"
                if tree.name == f"linux-headers-{kernel.release}":
                    flavour = rel
                elif tree.name.endswith("-common"):
                    common = rel
        if common is None or flavour is None:
            raise HeadersUnavailable(
                f"{kernel.release}: packages {', '.join(kernel.headers)} hold no "
                f"linux-headers-{kernel.release} and -common trees; check the headers list in kernels.yaml"
            )
        return KernelHeaders(kernel, roots, common, flavour)
