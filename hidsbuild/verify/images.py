"""Kernel images to boot: each kernel's image package fetched with PrivateApt (signature-checked),
its /boot/vmlinuz-* and /boot/config-* extracted once and cached by package, version and arch."""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..apt import PackageRef, PrivateApt
from ..errors import HeadersUnavailable
from ..kernels import Kernel

__all__ = ["KernelImage", "image_ref", "fetch_image", "REQUIRED_BUILTINS"]

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


def image_ref(kernel: Kernel) -> PackageRef:
    return PackageRef(kernel.image, kernel.version, kernel.suite, kernel.deb_arch)


def fetch_image(apt: PrivateApt, kernel: Kernel, cache: Path) -> KernelImage:
    """The kernel's vmlinuz and config, downloaded and extracted on first use; raises
    HeadersUnavailable (the archive no longer serves that image) with the package named."""
    ref = image_ref(kernel)
    stem = cache / "verify" / "images" / f"{ref.name}_{ref.version}_{ref.deb_arch}"
    image = KernelImage(stem.with_name(stem.name + ".vmlinuz"), stem.with_name(stem.name + ".config"))
    if image.vmlinuz.is_file() and image.config.is_file():
        return image
    stem.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hids-image-", dir=stem.parent) as tmp:
        (deb,) = apt.download([ref], Path(tmp) / "deb")
        tree = Path(tmp) / "tree"
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
        found = [sorted((tree / "boot").glob(f"{kind}-*")) for kind in ("vmlinuz", "config")] if proc.returncode == 0 else []
        if not found or not all(found):
            raise HeadersUnavailable(f"{deb.name} holds no /boot/vmlinuz-* and config-*: "
                                     f"{proc.stderr.strip() or 'not a kernel image package'}")
        os.replace(found[1][0], image.config)
        os.replace(found[0][0], image.vmlinuz)  # last: its presence means both are in place
    return image
