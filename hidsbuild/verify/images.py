"""Kernel images to boot: each kernel's image package fetched with PrivateApt (signature-checked),
its vmlinuz and config extracted once and cached by package, version and arch.

Debian up to trixie ships both in the image package's /boot. Newer suites split the image: the
`linux-image-<release>` package only depends on `linux-binary-<release>` (vmlinuz) and
`linux-base-<release>` (config), both under /usr/lib/modules/<release>/; those are followed.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..apt import PackageRef, PrivateApt
from ..artifacts import read_checked, write_checked
from ..errors import HeadersUnavailable
from ..kernels import Kernel

__all__ = ["KernelImage", "image_refs", "fetch_image", "REQUIRED_BUILTINS"]

# What the guest needs before any module could be loaded: the initramfs carries no modules, so each
# must be built in (=y). Debian's cloud kernels have them all; a kernel that does not is reported.
REQUIRED_BUILTINS = {
    "common": ("CONFIG_BLK_DEV_INITRD", "CONFIG_RD_GZIP", "CONFIG_DEVTMPFS", "CONFIG_PROC_FS", "CONFIG_SYSFS",
               "CONFIG_BPF_SYSCALL", "CONFIG_BPF_EVENTS", "CONFIG_FTRACE_SYSCALLS", "CONFIG_INET", "CONFIG_MAGIC_SYSRQ"),
    "x86_64": ("CONFIG_SERIAL_8250_CONSOLE",),
    "aarch64": ("CONFIG_SERIAL_AMBA_PL011_CONSOLE",),
}


@dataclass(frozen=True)
class KernelImage:
    vmlinuz: Path
    config: Path

    def missing_builtins(self, arch: str) -> list[str]:
        """Options the guest needs that this kernel has as a module or not at all."""
        values = dict(line.split("=", 1) for line in self.config.read_text().splitlines() if line.startswith("CONFIG_"))
        wanted = REQUIRED_BUILTINS["common"] + REQUIRED_BUILTINS[arch]
        return [f"{o}={values.get(o, 'unset')}" for o in wanted if values.get(o) != "y"]


def image_refs(kernel: Kernel) -> list[PackageRef]:
    """The image packages to try, in order: the one kernels.yaml names (by default -unsigned, the
    bare kernel) and, for that default, the signed package of the same build: some -unsigned pool
    files 404 while the signed one of the same version is served, and both boot the same kernel."""
    names = [kernel.image]
    if kernel.image == f"linux-image-{kernel.release}-unsigned":
        names.append(f"linux-image-{kernel.release}")
    return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch) for name in names]


_FILES = {"vmlinuz": ("boot/vmlinuz-*", "usr/lib/modules/*/vmlinuz"),
          "config": ("boot/config-*", "usr/lib/modules/*/config")}


def _find(tree: Path, kind: str) -> Path | None:
    return next((hit for pattern in _FILES[kind] for hit in sorted(tree.glob(pattern))), None)


def _split_parts(deb: Path, kernel: Kernel) -> list[PackageRef]:
    """The same-version linux-binary/linux-base packages of this release the image depends on."""
    proc = subprocess.run(["dpkg-deb", "-f", str(deb), "Depends"], capture_output=True, text=True)
    names = re.findall(rf"(linux-(?:binary|base)-{re.escape(kernel.release)})\s*\(=\s*{re.escape(kernel.version)}\)",
                       proc.stdout)
    return [PackageRef(name, kernel.version, kernel.suite, kernel.deb_arch) for name in sorted(set(names))]


def _unpack(deb: Path, tree: Path) -> None:
    proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HeadersUnavailable(f"{deb.name}: not a Debian package: {proc.stderr.strip()}")


def _cached(image: KernelImage) -> bool:
    """Both files present and unchanged since they were extracted (a changed one is discarded)."""
    return all(read_checked(path, f"kernel {path.suffix[1:]}") is not None for path in (image.config, image.vmlinuz))


def fetch_image(apt: PrivateApt, kernel: Kernel, cache: Path) -> KernelImage:
    """The kernel's vmlinuz and config, downloaded and extracted on first use; raises
    HeadersUnavailable (the archive serves none of its image packages) with the packages named."""
    problems = []
    for ref in image_refs(kernel):
        try:
            return _fetch(apt, kernel, ref, cache)
        except HeadersUnavailable as exc:
            problems.append(str(exc))
    raise HeadersUnavailable("; ".join(problems))


def _fetch(apt: PrivateApt, kernel: Kernel, ref: PackageRef, cache: Path) -> KernelImage:
    stem = cache / "verify" / "images" / f"{ref.name}_{ref.version}_{ref.deb_arch}"
    image = KernelImage(stem.with_name(stem.name + ".vmlinuz"), stem.with_name(stem.name + ".config"))
    if _cached(image):
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
            raise HeadersUnavailable(f"{deb.name} (and the linux-binary/linux-base packages it depends on) "
                                     f"hold no {'vmlinuz' if vmlinuz is None else 'config'}")
        write_checked(image.config, config.read_bytes())
        write_checked(image.vmlinuz, vmlinuz.read_bytes())
    return image
