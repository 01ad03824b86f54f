"""Local: header trees, or .deb files, from a directory the user names, for kernels no archive here
serves (an Ubuntu, RHEL or custom kernel's headers the user has).

kernels.yaml names the directory with `headers:` (relative to kernels.yaml and inside its
repository, or absolute) and the upstream kernel version with `version:` (e.g. 6.1.176). The
directory holds either

- one merged header tree, as a custom kernel's `make modules_prepare` leaves it (or a RHEL
  /usr/src/kernels/<release>): `.config`, `include/`, `arch/<arch>/` with its generated headers; or
- `.deb` files (e.g. Ubuntu's linux-headers-<abi> and linux-headers-<release>), extracted together.

Nothing is downloaded. The tree is copied into the headers cache once per content (the entry is
named by a fingerprint of every file's path, size and mtime, so an edit makes a new entry), hashed
file by file there like a Debian tree, and compiled against from the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hids_bytecode.arches import Arch

from ..errors import PackageUnavailable
from .base import Archive, Fields, Source

if TYPE_CHECKING:
    from ..kernels import Kernel

__all__ = ["LOCAL", "stage", "fingerprint", "tree_problem"]

# What uname -r may print for a custom kernel, kept to characters safe in a file name.
RELEASE = re.compile(r"\d+\.\d+[A-Za-z0-9._+-]{0,62}")
_UPSTREAM = re.compile(r"\d+\.\d+(?:\.\d+)?")
_PATH = re.compile(r"/?(?![/-])[A-Za-z0-9_./+-]+")
_PATH_WHAT = "a directory path (letters, digits, '_', '.', '/', '+', '-')"


def tree_problem(directory: Path, arch: Arch) -> str | None:
    """Why `directory` is neither a header tree of `arch` nor a directory of .deb files; None if it is one."""
    if not directory.is_dir():
        return f"no such directory {str(directory)!r}"
    if any(directory.glob("*.deb")):
        return None
    missing = [rel for rel in ("include", f"arch/{arch.src_arch}/include") if not (directory / rel).is_dir()]
    if missing:
        return (f"{str(directory)!r} holds no .deb files and is not a {arch.uname} kernel header tree "
                f"(no {', '.join(m + '/' for m in missing)})")
    return None


def fingerprint(directory: Path) -> str:
    """sha256 of every entry's relative path, type, size, mtime and link target under `directory`:
    what changes when the user edits, adds or replaces a file, read without hashing contents."""
    h = hashlib.sha256()
    for base, dirs, files in os.walk(directory):  # os.walk lists links to directories but does not enter them
        dirs.sort()
        rel = os.path.relpath(base, directory)
        for name in sorted(dirs + files):
            path = os.path.join(base, name)
            st = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
            h.update(f"{rel}/{name}\0{st.st_mode >> 12}\0{st.st_size}\0{st.st_mtime_ns}\0{link}\n"
                     .encode(errors="surrogateescape"))
    return h.hexdigest()


def stage(kernel: Kernel, dest: Path) -> None:
    """Lay the kernel's headers out under `dest` as a package would install them:
    usr/src/linux-headers-<release>/ (and, from .debs, whatever other trees they hold)."""
    source = Path(kernel.headers[0])
    debs = sorted(source.glob("*.deb"))
    tree = dest / "usr/src" / f"linux-headers-{kernel.release}"
    if debs:
        for deb in debs:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise PackageUnavailable(f"{deb}: cannot be extracted: {proc.stderr.strip()}")
        if not tree.is_dir():
            raise PackageUnavailable(f"the .deb files in {source} hold no /usr/src/linux-headers-{kernel.release} tree")
    else:
        tree.parent.mkdir(parents=True)
        shutil.copytree(source, tree, symlinks=True)


class Local:
    name = "local"
    keys = frozenset({"headers", "version"})
    archive: Archive | None = None
    release_what = "a kernel release as uname -r prints it (digits.digits then letters, digits, '.', '_', '+', '-')"

    def parse(self, fields: Fields, release: str, arch: Arch) -> Source:
        if not RELEASE.fullmatch(release):
            raise fields.fail("release", f"{fields.show(release)} is not {self.release_what}")
        version = fields.text("version", _UPSTREAM, "an upstream kernel version (e.g. 6.1.176)")
        written = fields.text("headers", _PATH, _PATH_WHAT)
        directory = (fields.root / written).resolve()
        if not written.startswith("/") and not directory.is_relative_to(fields.root):
            raise fields.fail("headers", f"{written!r} resolves outside the repository ({fields.root}); "
                                         "name a directory outside it by its absolute path")
        problem = tree_problem(directory, arch)
        if problem:
            raise fields.fail("headers", problem)
        return Source("", version, (str(directory),), "")

    def upstream(self, kernel: Kernel) -> str:
        return kernel.version

    def flavour(self, release: str) -> str:
        return ""

    def header_trees(self, kernel: Kernel, roots: Sequence[Path]) -> tuple[str, str] | None:
        """The release's tree is the flavour tree; the shared tree is another one whose name the
        release starts with (Ubuntu's linux-headers-<abi>), or the same tree when it stands alone."""
        (root,) = roots
        trees = [t.name for t in sorted((root / "usr/src").glob("linux-headers-*")) if t.is_dir()]
        flavour = f"linux-headers-{kernel.release}"
        if flavour not in trees:
            return None
        shared = [t for t in trees if t != flavour and flavour.startswith(t + "-")]
        common = max(shared, key=len) if shared else flavour
        return f"0/usr/src/{common}", f"0/usr/src/{flavour}"

    def image_packages(self, kernel: Kernel) -> list[str]:
        return []


LOCAL = Local()
