"""A private apt state on the build host for a distro archive's kernel packages of any suite.

apt checks the archive's signatures (InRelease against only the keyrings the distro module names,
`signed-by`) and the package hashes, so nothing downloaded here is trusted on the mirror's word
alone. The mirror addresses come from the distro module (for Debian, the host's own apt
configuration), never from this code.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .distros import Archive
from .distros.debian import ARCHIVE as DEBIAN_ARCHIVE
from .errors import PackageUnavailable
from .report import console

__all__ = ["PrivateApt", "PackageRef", "Remote", "fetch_all"]

_FETCH_JOBS = 4  # concurrent downloads: enough to hide latency, few enough to be polite to a mirror

_SUITE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


@dataclass(frozen=True)
class Remote:
    """A package file as the signed index describes it."""

    uri: str
    filename: str
    size: int
    sha256: str


@dataclass(frozen=True)
class PackageRef:
    name: str
    version: str
    suite: str
    deb_arch: str

    def __str__(self) -> str:
        return f"{self.name}={self.version} ({self.suite}/{self.deb_arch})"


class PrivateApt:
    """apt-get/apt-cache over a state directory of our own, for the suites and arches asked."""

    def __init__(self, root: Path, suites: list[str], deb_arches: list[str], archive: Archive = DEBIAN_ARCHIVE) -> None:
        self.root = root
        self.suites = sorted(set(suites))
        self.deb_arches = sorted(set(deb_arches))
        self.archive = archive
        self._updated = False

    def _options(self) -> list[str]:
        opts = [
            f"-oDir::Etc::SourceList={self.root / 'sources.list'}",
            "-oDir::Etc::SourceParts=/nonexistent",
            f"-oDir::State::Lists={self.root / 'lists'}",
            f"-oDir::State::status={self.root / 'status'}",
            f"-oDir::Cache={self.root / 'cache'}",
            "-oAcquire::Languages=none",
            "-oAPT::Sandbox::User=root",
            "-oDebug::NoLocking=1",
            "-qq",
        ]
        opts += [f"-oAPT::Architectures::={a}" for a in self.deb_arches]
        return opts

    def _write_config(self) -> None:
        # kernels.yaml checks suites too; this line keeps a bad one from ever becoming a source line.
        bad = [s for s in self.suites if not _SUITE.fullmatch(s)]
        if bad:
            raise PackageUnavailable(f"refusing suite name {bad[0]!r}: not a {self.archive.name} suite name")
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "status").touch()
        keyrings = self.archive.keyrings()
        if not keyrings:
            raise PackageUnavailable(f"no {self.archive.name} archive keyring on this host to check its signatures")
        options = f"arch={','.join(self.deb_arches)} signed-by={','.join(str(k) for k in keyrings)}"
        lines = [f"deb [{options}] {self.archive.mirror(s)} {s} main" for s in self.suites]
        (self.root / "sources.list").write_text("\n".join(lines) + "\n")

    def update(self) -> None:
        """Fetch and verify the package indices of our suites (once per instance)."""
        if self._updated:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # Two builds sharing a cache dir share this state: apt's own locking is off (not root's
        # dpkg), so one flock keeps their index updates from interleaving.
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._write_config()
            proc = subprocess.run(["apt-get", *self._options(), "update"], capture_output=True, text=True)
        problems = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith(("E:", "W:", "Err:"))]
        if proc.returncode != 0 or any(ln.startswith(("E:", "Err:")) for ln in problems):
            detail = "; ".join(problems) or proc.stderr.strip()
            raise PackageUnavailable(f"apt update of {', '.join(self.suites)} failed: {detail}")
        self._updated = True

    def locate(self, refs: list[PackageRef]) -> list[Remote]:
        """Where each exact package version is served, with the size and sha256 apt verified
        against the signed index; names the first one the archive lacks."""
        served: dict[str, dict[str, list[tuple[str, str, str]]]] = {}
        for deb_arch in sorted({ref.deb_arch for ref in refs}):
            served[deb_arch] = self._madison(sorted({r.name for r in refs if r.deb_arch == deb_arch}), deb_arch)
        specs = []
        for ref in refs:
            copies = served[ref.deb_arch].get(ref.name, [])
            names = [name for name, version, _ in copies if version == ref.version]
            if not names:
                raise PackageUnavailable(
                    f"{ref.name}={ref.version} ({ref.deb_arch}) is no longer served by {self.archive.name} "
                    f"suite {ref.suite}: run `invoke kernels.discover --suite {ref.suite}` "
                    "and update that kernel's version in kernels.yaml"
                )
            specs.append(f"{names[0]}={ref.version}")
        proc = subprocess.run(["apt-get", *self._options(), "--print-uris", "download", *specs],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise PackageUnavailable(f"apt-get download {' '.join(specs)} failed: {proc.stderr.strip()}")
        # Lines read: 'URI' FILENAME SIZE SHA256:HEX
        found = {}
        for line in proc.stdout.splitlines():
            match = re.fullmatch(r"'(\S+)' (\S+) (\d+) SHA256:([0-9a-f]{64})", line.strip())
            if match:
                found[match.group(2).split("_", 1)[0]] = Remote(match.group(1), match.group(2), int(match.group(3)),
                                                               match.group(4))
        missing = [ref for ref in refs if ref.name not in found]
        if missing:
            raise PackageUnavailable(f"apt names no download with a sha256 for {missing[0]}")
        return [found[ref.name] for ref in refs]

    def download(
        self, refs: list[PackageRef], dest: Path, on_progress: Callable[[int], None] | None = None
    ) -> list[Path]:
        """Download exact package versions into dest, concurrently, each checked against apt's sha256."""
        return fetch_all(self.locate(refs), dest, on_progress)

    def _madison(self, names: list[str], deb_arch: str) -> dict[str, list[tuple[str, str, str]]]:
        """package -> (apt name, version, suite) of every copy in deb_arch's indices. The apt name
        carries an arch qualifier for foreign-arch packages (pkg:arm64) and none for native or
        arch-all ones, which is how `apt-get download` wants them named."""
        # One apt-cache process for every name: each process re-reads all the suites' indices
        # (seconds apiece), so one call per package made header fetching mostly waiting.
        self.update()
        proc = subprocess.run(["apt-cache", *self._options(), "madison", *names], capture_output=True, text=True)
        found: dict[str, list[tuple[str, str, str]]] = {}
        for line in proc.stdout.splitlines():
            cols = [c.strip() for c in line.split("|")]
            if len(cols) >= 3:
                where = cols[2].split()  # <uri> <suite>/<component> <arch> Packages
                if len(where) >= 3 and where[2] == deb_arch:
                    found.setdefault(cols[0].split(":")[0], []).append((cols[0], cols[1], where[1].split("/")[0]))
        return found



def _fetch_one(remote: Remote, dest: Path, on_progress: Callable[[int], None] | None) -> Path:
    target = dest / remote.filename
    partial = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    size = 0
    import urllib.request  # ~30 ms with http.client: only a download needs it, never a rebuild from cache

    try:
        with urllib.request.urlopen(remote.uri, timeout=60) as response, open(partial, "wb") as out:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                h.update(chunk)
                size += len(chunk)
                if on_progress:
                    on_progress(len(chunk))
    except OSError as exc:  # URLError and HTTPError included
        partial.unlink(missing_ok=True)
        raise PackageUnavailable(f"download of {remote.filename} from {remote.uri} failed: {exc}") from None
    if size != remote.size or h.hexdigest() != remote.sha256:
        partial.unlink(missing_ok=True)
        raise PackageUnavailable(f"{remote.filename}: got {size} bytes with sha256 {h.hexdigest()[:16]}..., the signed "
                                 f"index says {remote.size} bytes, {remote.sha256[:16]}...: refused")
    partial.replace(target)
    # One line per file as well as the bar: a CI log has no live bar, and minutes of silence read as a hang.
    console.print(f"  fetched {remote.filename} ({size / 1e6:.1f} MB, sha256 ok)", markup=False, soft_wrap=True)
    return target


def fetch_all(remotes: list[Remote], dest: Path, on_progress: Callable[[int], None] | None = None) -> list[Path]:
    """Download every file concurrently (bounded); each is kept only if its size and sha256 match."""
    dest.mkdir(parents=True, exist_ok=True)
    unique = list({r.filename: r for r in remotes}.values())  # an arch-all package serves several arches
    with ThreadPoolExecutor(max_workers=_FETCH_JOBS) as pool:
        fetched = pool.map(lambda r: _fetch_one(r, dest, on_progress), unique)
        paths = dict(zip((r.filename for r in unique), fetched, strict=True))
    return [paths[r.filename] for r in remotes]
