"""Kernel images to boot: each kernel's image package fetched with PrivateApt (signature-checked),
its /boot/vmlinuz-* extracted once and cached by package, version and arch."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ..apt import PackageRef, PrivateApt
from ..errors import HeadersUnavailable
from ..kernels import Kernel

__all__ = ["image_ref", "fetch_vmlinuz"]


def image_ref(kernel: Kernel) -> PackageRef:
    return PackageRef(kernel.image, kernel.version, kernel.suite, kernel.deb_arch)


def fetch_vmlinuz(apt: PrivateApt, kernel: Kernel, cache: Path) -> Path:
    """The kernel's vmlinuz, downloaded and extracted on first use; raises HeadersUnavailable
    (the archive no longer serves that image) with the package named."""
    ref = image_ref(kernel)
    dest = cache / "verify" / "images" / f"{ref.name}_{ref.version}_{ref.deb_arch}.vmlinuz"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hids-image-", dir=dest.parent) as tmp:
        (deb,) = apt.download([ref], Path(tmp) / "deb")
        tree = Path(tmp) / "tree"
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], capture_output=True, text=True)
        found = sorted((tree / "boot").glob("vmlinuz-*")) if proc.returncode == 0 else []
        if not found:
            raise HeadersUnavailable(f"{deb.name} holds no /boot/vmlinuz-*: {proc.stderr.strip() or 'not a kernel image'}")
        os.replace(found[0], dest)
    return dest
