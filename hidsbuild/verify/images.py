"""Kernel images to boot: each kernel's image package fetched with PrivateApt (signature-checked),
its vmlinuz and config extracted once and cached by package, version and arch.

Debian up to trixie ships both in the image package's /boot. Newer suites split the image: the
`linux-image-<release>` package only depends on `linux-binary-<release>` (vmlinuz) and
`linux-base-<release>` (config), both under /usr/lib/modules/<release>/, and
`linux-modules-<release>` (the modules); those are followed.

One module is kept too, for the guest's module_load workload (the initramfs carries no module tree):
a small one without dependencies, decompressed, so finit_module(2) loads it as it is.
"""

from __future__ import annotations

import lzma
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hids_bytecode.arches import ARCHES

from ..apt import PackageRef, PrivateApt
from ..artifacts import read_checked, write_checked
from ..distros.debian import image_parts
from ..errors import PackageUnavailable
from ..kernels import Kernel

__all__ = ["KernelImage", "image_refs", "fetch_image", "REQUIRED_BUILTINS"]

# What the guest needs before any module could be loaded: the initramfs carries no modules, so each
# must be built in (=y), with its arch's serial console (arches.Arch.console_config). Debian's cloud
# kernels have them all; a kernel that does not is reported.
REQUIRED_BUILTINS = ("CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_DEVTMPFS", "CONFIG_PROC_FS", "CONFIG_SYSFS",
                     "CONFIG_BPF_SYSCALL", "CONFIG_BPF_EVENTS", "CONFIG_FTRACE_SYSCALLS", "CONFIG_INET",
                     "CONFIG_MAGIC_SYSRQ")


# Tried first, in order: tiny modules whose init only registers a table or an algorithm.
_MODULE_PREFERRED = ("fs/nls/nls_iso8859-1", "fs/nls/nls_utf8", "lib/crc-itu-t", "crypto/michael_mic")
_MODULE_DIRS = ("fs", "crypto", "lib")  # else the smallest dependency-free module under these


@dataclass(frozen=True)
class KernelImage:
    vmlinuz: Path
    config: Path
    module: Path | None = None  # a dependency-free module of this kernel, uncompressed (None: none found)

    def missing_builtins(self, arch: str) -> list[str]:
        """Options the guest needs that this kernel has as a module or not at all."""
        values = dict(line.split("=", 1) for line in self.config.read_text().splitlines() if line.startswith("CONFIG_"))
        wanted = (*REQUIRED_BUILTINS, ARCHES[arch].console_config)
        return [f"{o}={values.get(o, 'unset')}" for o in wanted if values.get(o) != "y"]


def image_refs(kernel: Kernel) -> list[PackageRef]:
    """The image packages to try, in order, as the kernel's distro names them (for Debian: the one
    kernels.yaml names, by default -unsigned, then the signed package of the same build)."""
    return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch)
            for name in kernel.packaging.image_packages(kernel)]


_FILES = {"vmlinuz": ("boot/vmlinuz-*", "usr/lib/modules/*/vmlinuz"),
          "config": ("boot/config-*", "usr/lib/modules/*/config")}


def _find(tree: Path, kind: str) -> Path | None:
    return next((hit for pattern in _FILES[kind] for hit in sorted(tree.glob(pattern))), None)


def _split_parts(deb: Path, kernel: Kernel) -> list[PackageRef]:
    """The same-version linux-binary/-base/-modules packages of this release the image depends on."""
    proc = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True)
    return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch)
            for name in image_parts(kernel.release, kernel.version, proc.stdout)]


def _unpack(deb: Path, tree: Path) -> None:
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise PackageUnavailable(f"{deb.name}: not a Debian package: {proc.stderr.strip()}")


def _cached(image: KernelImage) -> bool:
    """Files present and unchanged since they were extracted (a changed one is discarded), and the
    module decided: extracted, or recorded as absent from the package."""
    files = (image.config, image.vmlinuz) + ((image.module,) if image.module else ())
    return all(read_checked(path, f"kernel {path.suffix[1:]}") is not None for path in files)


def _module_bytes(path: Path) -> bytes | None:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            return None
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data if path.name.endswith(".ko") else None


def _no_depends(data: bytes) -> bool:
    return b"\0depends=\0" in data or data.startswith(b"depends=\0")


def _pick_module(tree: Path) -> tuple[str, bytes] | None:
    """(file name, uncompressed bytes) of a small module that depends on no other module."""
    roots = [d for pattern in ("usr/lib/modules/*/kernel", "lib/modules/*/kernel") for d in sorted(tree.glob(pattern))]
    found = {str(p.relative_to(root)).split(".ko")[0]: p for root in roots for p in root.rglob("*.ko*")}
    for rel in _MODULE_PREFERRED:
        data = _module_bytes(found[rel]) if rel in found else None
        if data and _no_depends(data):
            return Path(rel).name + ".ko", data
    for rel, path in sorted(found.items(), key=lambda kv: kv[1].stat().st_size):
        if rel.split("/", 1)[0] in _MODULE_DIRS:
            data = _module_bytes(path)
            if data and _no_depends(data):
                return Path(rel).name + ".ko", data
    return None


def fetch_image(apt: PrivateApt, kernel: Kernel, cache: Path) -> KernelImage:
    """The kernel's vmlinuz and config, downloaded and extracted on first use; raises
    PackageUnavailable (the archive serves none of its image packages) with the packages named."""
    refs = image_refs(kernel)
    if not refs:
        raise PackageUnavailable(f"{kernel.release}: no archive serves an image of this {kernel.distro} kernel to boot")
    problems = []
    for ref in refs:
        try:
            return _fetch(apt, kernel, ref, cache)
        except PackageUnavailable as exc:
            problems.append(str(exc))
    raise PackageUnavailable("; ".join(problems))


def _fetch(apt: PrivateApt, kernel: Kernel, ref: PackageRef, cache: Path) -> KernelImage:
    stem = cache / "verify" / "images" / f"{ref.name}_{ref.version}_{ref.deb_arch}"
    modules = stem.with_name(stem.name + ".modules")
    no_module = modules / "none"
    known = sorted(modules.glob("*.ko"))
    image = KernelImage(stem.with_name(stem.name + ".vmlinuz"), stem.with_name(stem.name + ".config"),
                        known[0] if known else None)
    if (known or no_module.is_file()) and _cached(image):
        return image
    stem.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hids-image-", dir=stem.parent) as tmp:
        tree = Path(tmp) / "tree"
        (deb,) = apt.download([ref], Path(tmp) / "deb")
        _unpack(deb, tree)
        if _find(tree, "vmlinuz") is None:
            for part in apt.download(_split_parts(deb, kernel), Path(tmp) / "deb"):
                _unpack(part, tree)
        vmlinuz, config = _find(tree, "vmlinuz"), _find(tree, "config")
        if vmlinuz is None or config is None:
            raise PackageUnavailable(f"{deb.name} (and the linux-binary/-base/-modules packages it depends on) "
                                     f"hold no {'vmlinuz' if vmlinuz is None else 'config'}")
        write_checked(image.config, config.read_bytes())
        write_checked(image.vmlinuz, vmlinuz.read_bytes())
        shutil.rmtree(modules, ignore_errors=True)
        modules.mkdir(exist_ok=True)
        picked = _pick_module(tree)
        if picked is None:
            no_module.write_text(f"{deb.name} holds no dependency-free module under {', '.join(_MODULE_DIRS)}\n")
            return KernelImage(image.vmlinuz, image.config)
        write_checked(modules / picked[0], picked[1])
    return KernelImage(image.vmlinuz, image.config, modules / picked[0])
