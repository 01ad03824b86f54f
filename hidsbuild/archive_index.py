"""Debian-format archive indexes read directly, trusting only what the archive's signing keys vouch for.

InRelease is checked with gpgv against the keyrings the distro module names and only its signed text is
read; each Packages file must then match the sha256 and size InRelease gives for it. Nothing
here calls apt: one suite's index is two HTTP requests, and suites are fetched concurrently.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import lzma
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from debian.deb822 import Packages, Release

from .errors import PackageUnavailable

__all__ = ["ArchiveError", "SuiteRelease", "fetch", "verified_release", "packages_paragraphs", "pool_served"]

_TIMEOUT = 60
_HEAD_TIMEOUT = 10  # a pool file that takes longer to answer a HEAD counts as not served
_HEAD_JOBS = 16
# Packages formats in the order they are preferred: gzip before xz because xz takes three times
# as long to unpack (2 s a suite here), which is more than the bigger download costs.
_COMPRESSIONS = ((".gz", gzip.decompress), (".xz", lzma.decompress), ("", bytes))


class ArchiveError(PackageUnavailable):
    """An archive index could not be fetched, or failed its signature or hash check."""


@dataclass(frozen=True)
class SuiteRelease:
    """The signed part of one suite's InRelease: where it was read and the files it vouches for."""

    mirror: str
    suite: str
    sha256: dict[str, tuple[str, int]]  # path under dists/<suite>/ -> (sha256, size)


def fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ArchiveError(f"cannot fetch {url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ArchiveError(f"cannot fetch {url}: {getattr(exc, 'reason', exc)}") from None


def _served(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=_HEAD_TIMEOUT) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError):
        return False


def pool_served(urls: list[str]) -> dict[str, bool]:
    """Whether each file is served now (HTTP HEAD, concurrently): a signed index can still name
    pool files the mirror no longer has, and only a request tells."""
    with ThreadPoolExecutor(max_workers=min(_HEAD_JOBS, len(urls)) or 1) as pool:
        return dict(zip(urls, pool.map(_served, urls), strict=True))


def verified_release(mirror: str, suite: str, keyrings: tuple[Path, ...]) -> SuiteRelease:
    """Fetch dists/<suite>/InRelease and keep its signed text only if a key of `keyrings` signed it."""
    url = f"{mirror}/dists/{suite}/InRelease"
    signed = fetch(url)
    if not keyrings:
        raise ArchiveError(
            f"{url}: no archive keyring to check it against (for Debian: apt-get install debian-archive-keyring)"
        )
    with tempfile.TemporaryDirectory(prefix="hids-inrelease-") as tmp:
        plain = Path(tmp) / "Release"
        # gpgv exits non-zero when one of several signatures has no key here (a newer release's
        # key, say), so the status lines decide: one good signature and no bad one.
        proc = subprocess.run(
            ["gpgv", "--status-fd", "1", *(f"--keyring={k}" for k in keyrings), "--output", str(plain), "-"],
            input=signed, capture_output=True,
        )
        status = proc.stdout.decode(errors="replace")
        if "[GNUPG:] VALIDSIG " not in status or "[GNUPG:] BADSIG " in status or not plain.is_file():
            reason = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no valid signature"])[-1]
            raise ArchiveError(f"{url}: not signed by an archive key ({reason.removeprefix('gpgv: ')})")
        release = Release(plain.read_text(encoding="utf-8"))
    if suite not in (release.get("Suite"), release.get("Codename")):
        signed_for = release.get("Codename") or release.get("Suite")
        raise ArchiveError(f"{url}: signed for suite {signed_for!r}, not {suite!r}")
    files = {entry["name"]: (entry["sha256"], int(entry["size"])) for entry in release.get("SHA256", [])}
    return SuiteRelease(mirror, suite, files)


def packages_index(release: SuiteRelease, deb_arch: str, component: str = "main") -> bytes:
    """The uncompressed Packages file of one arch, after its sha256 and size matched InRelease."""
    base = f"{component}/binary-{deb_arch}/Packages"
    for suffix, decompress in _COMPRESSIONS:
        expected = release.sha256.get(base + suffix)
        if expected is None:
            continue
        url = f"{release.mirror}/dists/{release.suite}/{base}{suffix}"
        data = fetch(url)
        digest = hashlib.sha256(data).hexdigest()
        if (digest, len(data)) != expected:
            raise ArchiveError(f"{url}: sha256 {digest} ({len(data)} bytes) does not match InRelease's "
                               f"{expected[0]} ({expected[1]} bytes): refused")
        try:
            return decompress(data)
        except (lzma.LZMAError, OSError, EOFError) as exc:
            raise ArchiveError(f"{url}: cannot decompress: {exc}") from None
    raise ArchiveError(f"{release.mirror}/dists/{release.suite}/InRelease lists no {base}[.xz|.gz]")


def packages_paragraphs(index: bytes, name_prefixes: tuple[str, ...]) -> Iterator[Packages]:
    """deb822 paragraphs of the packages whose name starts with one of the prefixes.

    A suite's index holds ~65,000 paragraphs in ~65 MB; only a few hundred are kernels. They are
    cut out with bytes.find first (a regex pass over the whole index costs more than the rest of
    the crawl), so deb822 parses only those.
    """
    common = os.path.commonprefix(list(name_prefixes)).encode()
    wanted = tuple(f"Package: {p}".encode() for p in name_prefixes)
    needle = b"\nPackage: " + common
    data = b"\n" + index  # so the first paragraph is found like the others
    chunks = []
    found = data.find(needle)
    while found != -1:
        at = found + 1
        end = data.find(b"\n\n", at)
        end = len(data) if end == -1 else end
        if data.startswith(wanted, at):
            chunks.append(data[at:end].rstrip(b"\n") + b"\n")
        found = data.find(needle, end)
    yield from Packages.iter_paragraphs(io.BytesIO(b"\n".join(chunks)), use_apt_pkg=False)
