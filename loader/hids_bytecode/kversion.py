"""Upstream kernel version from the strings distros print, which hide it in different places.

Debian's release (`6.1.0-50-cloud-amd64`) names the ABI, not the upstream patch level; that sits in
`uname -v` (`... Debian 6.1.170-3 (2026-05-01)`). Ubuntu puts it last in /proc/version_signature
(`Ubuntu 5.15.0-91.101-generic 5.15.131`). RHEL, Amazon Linux and custom builds keep it at the
start of the release itself (`3.10.0-1160.el7.x86_64`, `5.10.205-195.807.amzn2.x86_64`,
`6.18.44-fc-v657`).
"""

from __future__ import annotations

import re

from .errors import UnknownRelease
from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["KernelVersion", "upstream_version", "parse_release"]

_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?(?=$|[-+_.~a-z])")
_DEBIAN_V = re.compile(r"\bDebian (\d+)\.(\d+)(?:\.(\d+))?[-~+]")
_UBUNTU_SIG = r"^Ubuntu\S* \S+ (\d+)\.(\d+)(?:\.(\d+))?\s*$"  # compiled only for a host that has a signature


class KernelVersion(Record):
    __slots__ = ("major", "minor", "patch", "source")

    def __init__(self, major: int, minor: int, patch: int, source: str) -> None:
        self.major: Final = major
        self.minor: Final = minor
        self.patch: Final = patch
        self.source: Final = source  # where the version was read, for --explain

    @property
    def tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def _version(match: re.Match[str], source: str) -> KernelVersion:
    major, minor, patch = match.groups()
    return KernelVersion(int(major), int(minor), int(patch or 0), source)


def parse_release(release: str) -> KernelVersion:
    """The version at the start of a `uname -r` string; a release that has none is refused."""
    match = _RELEASE.match(release.strip())
    if not match:
        raise UnknownRelease(f"kernel release {release!r} does not start with a version like 6.1.0")
    return _version(match, "uname -r")


def upstream_version(release: str, uname_version: str = "", version_signature: str | None = None) -> KernelVersion:
    """Best upstream version: Ubuntu's signature, then Debian's `uname -v`, then the release."""
    if version_signature:
        match = re.match(_UBUNTU_SIG, version_signature.strip())
        if match:
            return _version(match, "/proc/version_signature")
    match = _DEBIAN_V.search(uname_version)
    if match:
        return _version(match, "uname -v")
    return parse_release(release)
