"""What a distro module tells the build: the protocol every `hidsbuild/distros/<name>.py` implements.

A kernel in kernels.yaml names its distro (`distro:`, default `debian`); everything that depends on
where its packages come from and how they are laid out is asked of that module, never spelled
out elsewhere. Architecture facts are not here: they are rows of hids_bytecode.arches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hids_bytecode.arches import Arch

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..kernels import Kernel

__all__ = ["Archive", "Distro", "Fields", "Source"]


class Fields(Protocol):
    """One kernel entry of kernels.yaml, read strictly: every error names the file, line and key."""

    root: Path  # the directory of kernels.yaml: relative paths in an entry resolve against it

    def text(self, key: str, pattern: re.Pattern[str], what: str, default: Any = ...) -> Any:
        """The key's string if it fully matches `pattern` (else an error saying it is not `what`);
        `default` when the key is absent, an error if there is no default."""

    def names(self, key: str, pattern: re.Pattern[str], what: str, default: Any = ...) -> Any:
        """A list of such strings, as a tuple."""

    def fail(self, key: str, message: str) -> ConfigError:
        """The error to raise about `key` (its line, or the entry's when absent)."""

    def show(self, value: Any) -> str:
        """A value for an error line: escaped and bounded, whatever the file held."""


@dataclass(frozen=True)
class Source:
    """What a distro module reads from a kernel entry, beyond release, arch and cflags."""

    suite: str  # archive suite serving the packages ("" when no archive does)
    version: str  # the package version (Debian), or the upstream kernel version (local)
    headers: tuple[str, ...]  # header packages, or the one directory the trees come from (local)
    image: str  # the bootable image package ("" when none is known)


@dataclass(frozen=True)
class Archive:
    """A signed package archive: where each suite is served and whose keys sign it."""

    name: str  # for messages
    keyrings: Callable[[], tuple[Path, ...]]  # keyrings apt and the index reader trust for it, read when used
    suites: tuple[str, ...]  # what discovery crawls when no suite is named
    mirror: Callable[[str], str]  # suite -> mirror URL (read from the host's configuration when called)


@runtime_checkable
class Distro(Protocol):
    name: str
    keys: frozenset[str]  # the kernel entry keys it reads (besides distro, release, arch, cflags)
    archive: Archive | None  # None: header trees come from a directory the user names
    release_what: str  # what a release of this distro looks like, for errors

    def parse(self, fields: Fields, release: str, arch: Arch) -> Source:
        """Check the release and read the distro's own keys; raise ConfigError on any doubt."""

    def upstream(self, kernel: Kernel) -> str:
        """The upstream kernel version, e.g. 6.1.176."""

    def flavour(self, release: str) -> str:
        """The kernel flavour a release names (cloud-amd64), "" when it names none."""

    def header_trees(self, kernel: Kernel, roots: Sequence[Path]) -> tuple[str, str] | None:
        """(common, flavour) tree paths, relative to the roots' common mount point
        (`<index>/usr/src/...`), among the kernel's extracted header roots; None when absent."""

    def image_packages(self, kernel: Kernel) -> list[str]:
        """The bootable image packages to try, in order (empty when the archive serves none)."""
