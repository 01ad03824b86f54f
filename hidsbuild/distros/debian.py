"""Debian: its kernel releases, package names, header tree layout, archive and keyrings.

Every Debian-specific fact of the build lives here; kernels.yaml, header fetching, discovery and
the VM proof ask this module. A Debian kernel is `linux-headers-<release>` (the flavour tree,
with .config and generated headers) plus `linux-headers-<abi>-common` (the shared tree), served
by a signed suite of deb.debian.org or its -security twin.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hids_bytecode.arches import Arch

from ..errors import PackageUnavailable
from .base import Archive, Fields, Source

if TYPE_CHECKING:
    from ..kernels import Kernel

__all__ = ["DEBIAN", "ARCHIVE", "Mirrors", "host_mirrors", "keyrings", "release_parts", "flavour_name", "PATCH_LEVEL",
           "PACKAGE", "PACKAGE_WHAT", "SUITE", "SUITE_WHAT", "VERSION_SYNTAX", "DEFAULT_SUITES", "RELEASE",
           "common_headers", "unsigned_image", "signed_image", "image_parts"]

# A release as uname -r prints it; lower case and no '~' because it is part of package names.
RELEASE = re.compile(r"(?P<abi>\d+\.\d+[0-9a-z.+-]*?)-(?P<flavour>(?:cloud-|rt-)?(?:amd64|arm64))")
_KERNEL_VERSION = re.compile(r"^(?:\d+:)?(?P<upstream>\d+\.\d+(?:\.\d+)?)[-~+]")
# Debian policy 5.6.12: [epoch:]upstream[-revision]; upstream starts with a digit and holds a
# hyphen only when a revision follows; the revision has no hyphen.
VERSION_SYNTAX = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~-]*[A-Za-z0-9.+~])?")
SUITE = re.compile(r"[a-z0-9][a-z0-9.+-]*")
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")
SUITE_WHAT = "a Debian suite name (lower-case letters, digits, '.', '+', '-')"
PACKAGE_WHAT = "a Debian package name (lower-case letters, digits, '+', '.', '-')"
# A real kernel release carries a patch level or ABI (6.1.0-50, 6.12.117+deb13); the metapackages'
# names (linux-headers-6.12-cloud-arm64) do not.
PATCH_LEVEL = re.compile(r"\d+\.\d+\.\d+[0-9a-z.+-]*")
DEFAULT_SUITES = ("bullseye", "bullseye-security", "bookworm", "bookworm-security", "bookworm-backports",
                  "trixie", "trixie-security", "sid")
_HOST_SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


@dataclass(frozen=True)
class Mirrors:
    debian: str
    security: str

    def for_suite(self, suite: str) -> str:
        return self.security if suite.endswith("-security") else self.debian


def host_mirrors() -> Mirrors:
    """The Debian and Debian-security mirrors this host's apt already uses."""
    uris: list[str] = []
    for path in _HOST_SOURCES:
        if path.is_file():
            text = path.read_text()
            uris += re.findall(r"^URIs:\s*(\S+)", text, re.M)
            uris += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M)
    debian = next((u for u in uris if not u.rstrip("/").endswith("-security")), None)
    if debian is None:
        raise PackageUnavailable("no Debian mirror in the host's apt sources (/etc/apt/sources.list.d/debian.sources)")
    security = next((u for u in uris if u.rstrip("/").endswith("-security")), debian.rstrip("/") + "-security")
    return Mirrors(debian.rstrip("/"), security.rstrip("/"))


def keyrings() -> tuple[Path, ...]:
    """The Debian archive keyrings of this host (debian-archive-keyring), without the removed keys."""
    return tuple(sorted(p for p in Path("/usr/share/keyrings").glob("debian-archive-*.gpg") if "removed" not in p.name))


def release_parts(release: str) -> tuple[str, str] | None:
    """(abi, flavour) of a kernel release as uname -r prints it, e.g. ('6.1.0-50', 'cloud-amd64')."""
    match = RELEASE.fullmatch(release)
    return (match.group("abi"), match.group("flavour")) if match else None


def flavour_name(flavour: str, deb_arch: str) -> str:
    """The release suffix of a flavour on an arch: cloud-amd64, or amd64 for the plain flavour."""
    return f"{flavour}-{deb_arch}" if flavour else deb_arch


def common_headers(abi: str) -> str:
    """The arch-independent headers package a flavour's headers depend on (-common-rt for rt)."""
    return f"linux-headers-{abi}-common"


def unsigned_image(release: str) -> str:
    return f"linux-image-{release}-unsigned"


def signed_image(release: str) -> str:
    return f"linux-image-{release}"


def image_parts(release: str, version: str, depends: str) -> list[str]:
    """The same-version linux-binary/-base/-modules packages a split image package (forky on)
    depends on, from its Depends field."""
    part = rf"(linux-(?:binary|base|modules)-{re.escape(release)})\s*\(=\s*{re.escape(version)}\)"
    return sorted(set(re.findall(part, depends)))


ARCHIVE = Archive("Debian", keyrings, DEFAULT_SUITES, lambda suite: host_mirrors().for_suite(suite))


class Debian:
    name = "debian"
    keys = frozenset({"suite", "version", "headers", "image"})
    archive: Archive | None = ARCHIVE
    release_what = "a Debian kernel release as uname -r prints it (e.g. 6.1.0-50-cloud-amd64)"

    def parse(self, fields: Fields, release: str, arch: Arch) -> Source:
        match = RELEASE.fullmatch(release)
        if not match:
            raise fields.fail("release", f"{fields.show(release)} is not {self.release_what}")
        flavour_arch = match.group("flavour").rsplit("-", 1)[-1]
        if flavour_arch != arch.debian:
            raise fields.fail("arch", f"{arch.uname} does not match the release's {flavour_arch} flavour")
        suite = fields.text("suite", SUITE, SUITE_WHAT)
        version = fields.text("version", VERSION_SYNTAX, "a Debian version ([epoch:]upstream[-revision])")
        if not _KERNEL_VERSION.match(version):
            raise fields.fail("version",
                              f"{fields.show(version)} is not a Debian kernel package version (e.g. 6.1.176-1)")
        headers = fields.names("headers", PACKAGE, PACKAGE_WHAT,
                               (f"linux-headers-{release}", common_headers(match.group("abi"))))
        image = fields.text("image", PACKAGE, PACKAGE_WHAT, unsigned_image(release))
        return Source(suite, version, headers, image)

    def upstream(self, kernel: Kernel) -> str:
        return _KERNEL_VERSION.match(kernel.version).group("upstream")  # type: ignore[union-attr]

    def flavour(self, release: str) -> str:
        return RELEASE.fullmatch(release).group("flavour")  # type: ignore[union-attr]

    def header_trees(self, kernel: Kernel, roots: Sequence[Path]) -> tuple[str, str] | None:
        common = flavour = None
        for index, root in enumerate(roots):
            for tree in sorted((root / "usr/src").glob("linux-headers-*")):
                rel = f"{index}/usr/src/{tree.name}"
                if tree.name == f"linux-headers-{kernel.release}":
                    flavour = rel
                elif tree.name.endswith("-common"):
                    common = rel
        return None if common is None or flavour is None else (common, flavour)

    def image_packages(self, kernel: Kernel) -> list[str]:
        # Some -unsigned pool files 404 while the signed package of the same build is served; both
        # boot the same kernel, so the default falls back to it.
        names = [kernel.image]
        if kernel.image == unsigned_image(kernel.release):
            names.append(signed_image(kernel.release))
        return names


DEBIAN = Debian()
