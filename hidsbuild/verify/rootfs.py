"""The verification guest's initramfs: a cached Debian base archive plus a small payload archive.

The base is a `debootstrap --variant=minbase --foreign` root of bookworm with python3, libbpf1 and
iproute2. Only debootstrap's first stage runs (download and unpack): the remaining packages are
unpacked with dpkg-deb and no maintainer script ever runs, so building an arm64 root needs no
qemu-user emulation and no binfmt. The guest's /init runs ldconfig, the one configuration step the
loader needs. The kernel accepts concatenated cpio archives, so each run adds only the payload
(loader, objects, checks, /init) to the cached base instead of repacking 100 MB.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hids_bytecode.arches import ARCHES

from ..distros.debian import host_mirrors
from ..errors import VerifyFailed
from ..templating import render

__all__ = ["GUEST_SUITE", "GUEST_PACKAGES", "base_archive", "payload_archive", "initramfs"]

GUEST_SUITE = "bookworm"
GUEST_PACKAGES = ("python3-minimal", "libpython3.11-stdlib", "libbpf1", "iproute2")
GUEST_CHECK = Path(__file__).resolve().parent / "guest_check.py"
GUEST_WORKLOADS = Path(__file__).resolve().parent / "workloads.py"  # imported by guest_check, beside it
GUEST_MODULES = "/opt/hids/modules"  # guest_check.MODULES
GUEST_SITE = "/opt/hids/site"
# Never read by the checks and a third of the root: apt lists, docs, locales, perl (dpkg's scripts never run).
_PRUNE = ("var/lib/apt/lists", "var/cache/apt", "debootstrap", "usr/share/doc", "usr/share/man",
          "usr/share/locale", "usr/share/info", "usr/share/zoneinfo", "usr/share/i18n", "usr/share/perl5",
          "usr/lib/{triplet}/perl-base", "usr/lib/{triplet}/gconv", "usr/lib/python3.11/pydoc_data")


def _run(cmd: list[str], what: str, **kwargs: object) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
        raise VerifyFailed(f"{what} failed: {tail}")


def _cpio_gz(root: Path, dest: Path) -> None:
    """newc archive of root (owned by root, fixed mtimes) compressed to dest, written atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with tmp.open("wb") as out:
        cpio = subprocess.Popen(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"],
                                cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-n", "-6"], stdin=cpio.stdout, stdout=out)
        assert cpio.stdin is not None and cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write("\n".join(names).encode() + b"\n")
        cpio.stdin.close()
        if cpio.wait() != 0 or gz.wait() != 0:
            tmp.unlink(missing_ok=True)
            raise VerifyFailed(f"packing {root} into {dest.name} failed")
    os.replace(tmp, dest)


def base_archive(arch: str, cache: Path) -> Path:
    """The Debian base of the guest for arch, built once and cached by suite, arch and packages."""
    key = hashlib.sha256(repr((GUEST_SUITE, arch, GUEST_PACKAGES, _PRUNE)).encode()).hexdigest()[:16]
    dest = cache / "verify" / "base" / f"{GUEST_SUITE}-{arch}-{key}.cpio.gz"
    if dest.is_file():
        return dest
    if shutil.which("debootstrap") is None:
        raise VerifyFailed("debootstrap is missing: apt-get install debootstrap")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hids-guest-", dir=dest.parent) as tmp:
        root = Path(tmp) / "root"
        _run(["debootstrap", "--foreign", "--variant=minbase", f"--arch={ARCHES[arch].debian}",
              f"--include={','.join(GUEST_PACKAGES)}", GUEST_SUITE, str(root), host_mirrors().debian],
             f"debootstrap {GUEST_SUITE} ({arch})")
        for deb in sorted((root / "var/cache/apt/archives").glob("*.deb")):
            # --keep-directory-symlink: bookworm's /bin, /lib are symlinks into /usr and must stay so.
            _run(["sh", "-c", f"dpkg-deb --fsys-tarfile '{deb}' | tar -x --keep-directory-symlink -C '{root}'"],
                 f"unpacking {deb.name}")
        for rel in _PRUNE:
            shutil.rmtree(root / rel.format(triplet=ARCHES[arch].cross_triplet), ignore_errors=True)
        for mountpoint in ("proc", "sys", "dev", "run", "tmp"):
            # debootstrap links proc to the host's /proc when it guesses it runs in a container.
            if (root / mountpoint).is_symlink():
                (root / mountpoint).unlink()
            (root / mountpoint).mkdir(exist_ok=True)
        _cpio_gz(root, dest)
    return dest


def payload_archive(site: Path, arch: str, cache: Path, module: Path | None = None) -> Path:
    """The per-run archive: the installed loader package tree at GUEST_SITE, the checks and their
    workloads, /init, and `module` (a module of the guest's kernel for the module_load workload)."""
    init = render("guest-init.sh.j2", site=GUEST_SITE, check="/opt/hids/guest_check.py")
    h = hashlib.sha256(init.encode() + GUEST_CHECK.read_bytes() + GUEST_WORKLOADS.read_bytes() + arch.encode())
    if module is not None:
        h.update(b"module\0" + module.name.encode() + b"\0" + module.read_bytes())
    for path in sorted(p for p in site.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(site)).encode() + b"\0" + path.read_bytes())
    dest = cache / "verify" / "payload" / f"{h.hexdigest()[:16]}.cpio.gz"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hids-payload-", dir=dest.parent) as tmp:
        root = Path(tmp)
        shutil.copytree(site, root / GUEST_SITE.lstrip("/"), ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(GUEST_CHECK, root / "opt/hids/guest_check.py")
        shutil.copy(GUEST_WORKLOADS, root / "opt/hids/workloads.py")
        if module is not None:
            (root / GUEST_MODULES.lstrip("/")).mkdir(parents=True)
            shutil.copy(module, root / GUEST_MODULES.lstrip("/") / module.name)
        (root / "init").write_text(init)
        (root / "init").chmod(0o755)
        _cpio_gz(root, dest)
    return dest


def initramfs(site: Path, arch: str, cache: Path, dest: Path, module: Path | None = None) -> Path:
    """The cached base and payload archives concatenated into dest: qemu takes one -initrd file."""
    with dest.open("wb") as out:
        for part in (base_archive(arch, cache), payload_archive(site, arch, cache, module)):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out)
    return dest
