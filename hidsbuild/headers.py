"""Kernel headers: the real Debian packages, fetched with apt and cached extracted on disk.

The cache is keyed by package, version and architecture; an entry appears only once fully
extracted (extract into a temporary directory, then rename), so an interrupted fetch never
leaves a tree a later build would trust.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .apt import PackageRef, PrivateApt
from .errors import HeadersUnavailable
from .kernels import Kernel

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


class HeadersCache:
    def __init__(self, root: Path, apt: PrivateApt | None) -> None:
        self.root = root
        self.apt = apt

    def _entry(self, ref: PackageRef) -> Path:
        return self.root / f"{ref.name}_{ref.version}_{ref.deb_arch}"

    def refs(self, kernel: Kernel) -> list[PackageRef]:
        # The -common package is arch: all; apt still resolves it under the kernel's arch.
        return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch) for name in kernel.headers]

    def missing(self, kernel: Kernel) -> list[PackageRef]:
        return [ref for ref in self.refs(kernel) if not self._entry(ref).is_dir()]

    def ensure(self, kernel: Kernel) -> KernelHeaders:
        """Fetch what is missing, then describe the kernel's header trees."""
        missing = self.missing(kernel)
        if missing:
            if self.apt is None:
                raise HeadersUnavailable(f"headers of {kernel.release} are not cached and no archive access was given")
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.root, prefix=".fetch-") as tmp:
                debs = self.apt.download(missing, Path(tmp) / "debs")
                for ref, deb in zip(missing, debs):
                    staging = Path(tmp) / ref.name
                    subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], check=True, capture_output=True)
                    entry = self._entry(ref)
                    if entry.exists():  # another build got there first
                        shutil.rmtree(staging)
                    else:
                        staging.rename(entry)
        return self.describe(kernel)

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
