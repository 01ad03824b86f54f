"""Where the CO-RE vmlinux.h is made and checked: dumped from the BTF in a kernel's headers
package (Debian ships a BTF-only vmlinux there) by bpftool inside the toolchain container.

The dump is written into a mounted directory, checked for a complete include guard, a plausible
size and a clean parse by clang before it is cached, and its hash is checked on every read.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Any

from . import containers
from .artifacts import discard, read_checked, write_checked
from .errors import PackageUnavailable
from .headers import KernelHeaders
from .kernels import CoreTarget
from .owners import make_scratch
from .units import HEADERS_DIR

__all__ = ["cache_path", "generate", "load", "problem"]

# A kernel's full BTF as C is megabytes (2.5 MB for 6.12); a dump far smaller than this was cut.
_MIN_SIZE = 256 * 1024
_GUARD_OPEN = b"#ifndef __VMLINUX_H__\n#define __VMLINUX_H__\n"
_GUARD_CLOSE = re.compile(rb"#endif /\* __VMLINUX_H__ \*/\s*\Z")


def cache_path(cache_dir: Path, target: CoreTarget, headers_identity: str) -> Path:
    """Where the vmlinux.h of a CO-RE target is cached: by the identity of the headers it comes
    from (KernelHeaders.identity: the exact packages, or a user's tree by its content)."""
    ident = hashlib.sha256(headers_identity.encode())
    return cache_dir / "btf" / ident.hexdigest()[:16] / target.arch / "vmlinux.h"


def problem(data: bytes) -> str | None:
    """Why `data` is not a whole vmlinux.h, or None."""
    if len(data) < _MIN_SIZE:
        return f"{len(data)} bytes, fewer than any kernel's BTF dump ({_MIN_SIZE})"
    if not data.startswith(_GUARD_OPEN) or not _GUARD_CLOSE.search(data[-64:]):
        return "the __VMLINUX_H__ include guard is not complete: the file was cut"
    # Lines that open and close a conditional, counted as re.findall(rb"^#if", data, re.M) would,
    # 15x faster: every build checks each cached dump (2.5 MB) again.
    opened = data.count(b"\n#if") + data.startswith(b"#if")
    closed = data.count(b"\n#endif") + data.startswith(b"#endif")
    if opened != closed:
        return f"{opened} conditionals opened, {closed} closed"
    return None


def load(path: Path) -> bytes | None:
    """The cached header if it is whole and unchanged since it was written, else None (discarded)."""
    data = read_checked(path, "CO-RE vmlinux.h")
    if data is not None and (reason := problem(data)):
        discard(path, "CO-RE vmlinux.h", reason)
        return None
    return data


def generate(client: Any, image: str, headers: KernelHeaders, dest: Path, scratch: Path) -> bytes:
    """Dump, check and cache the kernel's vmlinux.h at `dest`; raise PackageUnavailable on failure."""
    mounts = {root: f"{HEADERS_DIR}/{i}" for i, root in enumerate(headers.packages)}
    vmlinux = f"{HEADERS_DIR}/{headers.flavour}/vmlinux"
    script = (f"bpftool btf dump file {vmlinux} format c > /out/vmlinux.h 2> /out/stderr && "
              "clang -target bpf -fsyntax-only -x c /out/vmlinux.h 2>> /out/stderr")
    out = make_scratch(scratch, "btf")
    try:
        status = containers.run_to_dir(client, image, script, mounts, out)
        stderr = (out / "stderr").read_text(errors="replace").strip() if (out / "stderr").exists() else ""
        if status != 0:
            raise PackageUnavailable(f"no BTF for CO-RE in {headers.kernel.release}'s headers ({vmlinux}): "
                                     f"exit {status}: {stderr[-1000:]}")
        data = (out / "vmlinux.h").read_bytes()
        if reason := problem(data):
            raise PackageUnavailable(f"vmlinux.h of {headers.kernel.release} is not whole ({reason}); not cached")
        write_checked(dest, data)
        return data
    finally:
        shutil.rmtree(out, ignore_errors=True)
