"""A small kernel crawler: which kernel releases Debian's archive serves now, in kernels.yaml form."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .apt import PrivateApt
from .kernels import ARCHES

__all__ = ["DEFAULT_SUITES", "Served", "discover", "render_yaml"]

DEFAULT_SUITES = ("bullseye", "bullseye-security", "bookworm", "bookworm-security", "bookworm-backports",
                  "trixie", "trixie-security", "sid")
_HEADERS = re.compile(r"^linux-headers-(?P<release>\d+\.\d+[0-9A-Za-z.+~-]*?-(?P<flavour>(?:cloud-|rt-)?(?:amd64|arm64)))$")
_DEB_TO_UNAME = {deb: uname for uname, (deb, _) in ARCHES.items()}


@dataclass(frozen=True, order=True)
class Served:
    suite: str
    arch: str
    release: str
    version: str


def discover(apt: PrivateApt, flavour: str = "cloud") -> list[Served]:
    """Every (suite, arch, release, version) of a versioned headers package of one flavour
    ("cloud", "rt", or "" for the generic one)."""
    found = set()
    for name in apt.package_names("linux-headers-"):
        match = _HEADERS.match(name)
        if not match:
            continue
        release, deb_arch = match.group("release"), match.group("flavour").rsplit("-", 1)[-1]
        if match.group("flavour") != "-".join(filter(None, (flavour, deb_arch))) or deb_arch not in apt.deb_arches:
            continue
        for _, version, suite in apt.madison(name, deb_arch):
            if suite in apt.suites:
                found.add(Served(suite, _DEB_TO_UNAME[deb_arch], release, version))
    return sorted(found)


def render_yaml(served: list[Served]) -> str:
    lines = ["kernels:"]
    current = None
    for s in served:
        if (s.suite, s.arch) != current:
            current = (s.suite, s.arch)
            lines.append(f"  # {s.suite} / {s.arch}")
        lines += [f"  - release: {s.release}", f"    arch: {s.arch}", f"    suite: {s.suite}", f"    version: {s.version}"]
    return "\n".join(lines) + "\n"
