"""Kernel headers: a distro's real packages fetched with apt, or a user's own trees, cached on disk.

An archive kernel's cache entries are keyed by package, version and architecture; a local
kernel's (distros.local) by release, arch and a fingerprint of the user's directory. An entry
appears only once fully extracted and recorded file by file (extract into a temporary directory,
record, then rename), and every tree is checked against that record before a compile mounts it,
so neither an interrupted fetch nor a later edit leaves a tree a build would trust. How a
kernel's trees are laid out is its distro module's answer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .apt import PackageRef, PrivateApt, fetch_all
from .artifacts import read_checked, record_tree, tree_intact, write_checked
from .distros import local
from .errors import PackageUnavailable
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
    # What a compile depends on: the exact header package versions of an archive kernel, the
    # sha256 of the recorded tree (every file's hash) of a local one.
    identity: str

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
        self.apt = apt  # archive access for archive kernels; local kernels need none
        self._local_entries: dict[Kernel, Path] = {}

    def _entry(self, ref: PackageRef) -> Path:
        return self.root / f"{ref.name}_{ref.version}_{ref.deb_arch}"

    def _local_entry(self, kernel: Kernel) -> Path:
        """A local kernel's entry, named by the fingerprint of the user's directory (read once per
        instance): an edited directory is a new entry, never a stale one."""
        if kernel not in self._local_entries:
            mark = local.fingerprint(Path(kernel.headers[0]))[:16]
            self._local_entries[kernel] = self.root / f"local_{kernel.release}_{kernel.arch}_{mark}"
        return self._local_entries[kernel]

    def _roots(self, kernel: Kernel) -> list[Path]:
        if kernel.packaging.archive is None:
            return [self._local_entry(kernel)]
        return [self._entry(ref) for ref in self.refs(kernel)]

    def refs(self, kernel: Kernel) -> list[PackageRef]:
        """The kernel's header packages (none for a local kernel)."""
        if kernel.packaging.archive is None:
            return []
        # Debian's -common package is arch: all; apt still resolves it under the kernel's arch.
        return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch) for name in kernel.headers]

    def _deb_record(self, ref: PackageRef) -> Path:
        return self.root / f"{ref.name}_{ref.version}_{ref.deb_arch}.deb.json"

    def _local_record(self, kernel: Kernel) -> Path:
        entry = self._local_entry(kernel)
        return entry.with_name(entry.name + ".local.json")

    def packages(self, kernel: Kernel) -> list[dict[str, object]]:
        """The kernel's header packages as fetched: name, version, arch, and the size and sha256
        that apt's signed index gave and the download was checked against (for provenance); for a
        local kernel, the directory it came from and the sha256 of its recorded tree."""
        if kernel.packaging.archive is None:
            data = read_checked(self._local_record(kernel), f"local headers record {kernel.release}")
            return [json.loads(data) if data else {"name": f"linux-headers-{kernel.release}", "version": kernel.version,
                                                   "arch": kernel.deb_arch, "distro": kernel.distro, "sha256": None}]
        found = []
        for ref in self.refs(kernel):
            data = read_checked(self._deb_record(ref), f"package record {ref.name}")
            found.append(json.loads(data) if data else {"name": ref.name, "version": ref.version,
                                                         "arch": ref.deb_arch, "sha256": None})
        return found

    def missing(self, kernel: Kernel) -> list[str]:
        """What of the kernel's headers is not cached: package references, or its directory."""
        # A tree without the record of what it came from cannot be accounted for in provenance:
        # fetched again like a missing one.
        if kernel.packaging.archive is None:
            entry = self._local_entry(kernel)
            return [] if entry.is_dir() and self._local_record(kernel).is_file() else [kernel.headers[0]]
        return [str(ref) for ref in self.refs(kernel)
                if not (self._entry(ref).is_dir() and self._deb_record(ref).is_file())]

    def check(self, kernels: list[Kernel]) -> None:
        """Hash every cached tree these kernels compile against; a tree that changed since it was
        extracted (cut, edited) is discarded so that `fetch` gets it again."""
        for root in dict.fromkeys(root for k in kernels for root in self._roots(k)):
            tree_intact(root, f"headers {root.name}")

    def fetch(self, kernels: list[Kernel]) -> None:
        """Get every missing header tree of these kernels: archive packages downloaded at once
        (concurrently, sha256-checked) and extracted, local trees copied in; each is checked to
        hold the trees a compile needs, and only then moved into the cache."""
        reap_scratch(self.root / ".scratch")
        for kernel in kernels:
            if kernel.packaging.archive is None and self.missing(kernel):
                self._import_local(kernel)
        self._fetch_packages([k for k in kernels if k.packaging.archive is not None])
        for kernel in kernels:
            self.describe(kernel)

    def _import_local(self, kernel: Kernel) -> None:
        entry = self._local_entry(kernel)
        tmp = make_scratch(self.root / ".scratch", "local")
        try:
            staging = Path(tmp) / "tree"
            local.stage(kernel, staging)
            record_tree(staging, entry)
            # The tree record holds every file's sha256: its own hash is the content's identity.
            record = entry.with_name(entry.name + ".tree.json")
            write_checked(self._local_record(kernel), json.dumps(
                {"name": f"linux-headers-{kernel.release}", "version": kernel.version, "arch": kernel.deb_arch,
                 "distro": kernel.distro, "source": kernel.headers[0],
                 "sha256": hashlib.sha256(record.read_bytes()).hexdigest()}, sort_keys=True).encode())
            try:
                staging.rename(entry)
            except OSError:  # another build sharing this cache got there first
                shutil.rmtree(staging)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fetch_packages(self, kernels: list[Kernel]) -> None:
        missing = list(dict.fromkeys(ref for k in kernels for ref in self.refs(k)
                                     if not (self._entry(ref).is_dir() and self._deb_record(ref).is_file())))
        if not missing:
            return
        if self.apt is None:
            raise PackageUnavailable(f"headers of {', '.join(k.release for k in kernels)} are not cached "
                                     "and no archive access was given")
        tmp = make_scratch(self.root / ".scratch", "fetch")
        try:
            remotes = self.apt.locate(missing)
            unique = {r.filename: r.size for r in remotes}
            with ByteProgress(f"headers ({len(unique)} packages)", sum(unique.values())) as progress:
                debs = fetch_all(remotes, Path(tmp) / "debs", progress.advance)
            for ref, remote, deb in zip(missing, remotes, debs, strict=True):
                staging = Path(tmp) / ref.name
                proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(staging)], capture_output=True, text=True)
                if proc.returncode != 0:
                    raise PackageUnavailable(f"{deb.name}: cannot be extracted: {proc.stderr.strip()}")
                if not any((staging / "usr/src").glob("linux-headers-*")):
                    raise PackageUnavailable(f"{deb.name} holds no /usr/src/linux-headers-* tree")
                entry = self._entry(ref)
                record_tree(staging, entry)
                record = {"name": ref.name, "version": ref.version, "arch": ref.deb_arch, "suite": ref.suite,
                          "filename": remote.filename, "size": remote.size, "sha256": remote.sha256}
                write_checked(self._deb_record(ref), json.dumps(record, sort_keys=True).encode())
                try:
                    staging.rename(entry)
                except OSError:  # another build sharing this cache got there first; its tree is as good
                    shutil.rmtree(staging)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def describe(self, kernel: Kernel) -> KernelHeaders:
        roots = tuple(self._roots(kernel))
        trees = kernel.packaging.header_trees(kernel, roots)
        if trees is None:
            raise PackageUnavailable(
                f"{kernel.release}: {', '.join(kernel.headers)} hold no linux-headers-{kernel.release} tree "
                f"and its shared tree ({kernel.distro} layout); check the headers of that kernel in kernels.yaml"
            )
        if kernel.packaging.archive is None:
            (record,) = self.packages(kernel)
            if record["sha256"] is None:
                raise PackageUnavailable(f"{kernel.release}: the record of its local headers is gone; build again")
            identity = f"tree:{record['sha256']}"
        else:
            identity = ",".join(f"{p}={kernel.version}" for p in kernel.headers)
        return KernelHeaders(kernel, roots, *trees, identity)
