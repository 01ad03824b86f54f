"""Every per-architecture fact, one row per architecture: adding an arch is adding a row.

The loader reads what it needs at run time (uname name, syscall wrapper); the build side
(`hidsbuild`, which may import this module, never the reverse) reads the rest: package arch,
compiler target, kernel header directory, VM and cross tools.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Arch", "ARCHES"]


@dataclass(frozen=True)
class Arch:
    uname: str  # `uname -m`, the manifest's and the wheel tag's name
    debian: str  # dpkg architecture (package names, Packages indexes, flavours)
    clang_target: str  # target triple for a kernel-headers compile of this arch
    target_arch: str  # libbpf's bpf_tracing.h macro suffix: -D__TARGET_ARCH_<target_arch>
    src_arch: str  # the kernel source tree's arch/<src_arch>/ directory
    syscall_prefix: str  # the syscall wrapper symbols' prefix: <prefix>openat
    wrapper_since: tuple[int, int]  # first kernel (major, minor) entering syscalls through the wrappers
    qemu: str  # system emulator binary
    qemu_machine: str  # its -M machine
    qemu_cpu: str  # its -cpu model (TCG)
    console: str  # the serial console device the guest kernel writes to
    console_config: str  # the built-in (=y) kernel option that console needs from the first line
    cross_triplet: str  # GNU triplet: multiarch library dir, cross toolchain prefix


ARCHES: dict[str, Arch] = {a.uname: a for a in (
    # No CMPXCHG16B for x86 guests: qemu 7.2's TCG corrupts EFLAGS after SLUB's `cmpxchg16b %gs:`, and
    # 6.12.95+deb12 double-faults in kmem_cache_alloc in most boots (4 of 4 boot without it, 1 of 3 with).
    Arch("x86_64", "amd64", "x86_64-linux-gnu", "x86", "x86", "__x64_sys_", (4, 17),
         "qemu-system-x86_64", "q35", "max,-cx16", "ttyS0", "CONFIG_SERIAL_8250_CONSOLE", "x86_64-linux-gnu"),
    # arm64's virt board has a PL011 UART, not an 8250.
    Arch("aarch64", "arm64", "aarch64-linux-gnu", "arm64", "arm64", "__arm64_sys_", (4, 19),
         "qemu-system-aarch64", "virt", "max", "ttyAMA0", "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "aarch64-linux-gnu"),
)}

