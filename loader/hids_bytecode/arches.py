"""Every per-architecture fact, one row per architecture: adding an arch is adding a row.

The loader reads what it needs at run time (uname name, syscall wrapper); the build side
(`hidsbuild`, which may import this module, never the reverse) reads the rest: package arch,
compiler target, kernel header directory, VM and cross tools.
"""

from __future__ import annotations

from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Arch", "ARCHES"]


class Arch(Record):
    __slots__ = ("uname", "debian", "clang_target", "target_arch", "src_arch", "syscall_prefix", "wrapper_since",
                 "qemu", "qemu_machine", "qemu_cpu", "console", "console_config", "cross_triplet")

    def __init__(self, uname: str, debian: str, clang_target: str, target_arch: str, src_arch: str,
                 syscall_prefix: str, wrapper_since: tuple[int, int], qemu: str, qemu_machine: str, qemu_cpu: str,
                 console: str, console_config: str, cross_triplet: str) -> None:
        self.uname: Final = uname  # `uname -m`, the manifest's and the wheel tag's name
        self.debian: Final = debian  # dpkg architecture (package names, Packages indexes, flavours)
        self.clang_target: Final = clang_target  # target triple for a kernel-headers compile of this arch
        self.target_arch: Final = target_arch  # libbpf's bpf_tracing.h macro suffix: -D__TARGET_ARCH_<target_arch>
        self.src_arch: Final = src_arch  # the kernel source tree's arch/<src_arch>/ directory
        self.syscall_prefix: Final = syscall_prefix  # the syscall wrapper symbols' prefix: <prefix>openat
        self.wrapper_since: Final = wrapper_since  # first kernel (major, minor) entering syscalls through the wrappers
        self.qemu: Final = qemu  # system emulator binary
        self.qemu_machine: Final = qemu_machine  # its -M machine
        self.qemu_cpu: Final = qemu_cpu  # its -cpu model (TCG)
        self.console: Final = console  # the serial console device the guest kernel writes to
        self.console_config: Final = console_config  # the built-in (=y) option that console needs from the first line
        self.cross_triplet: Final = cross_triplet  # GNU triplet: multiarch library dir, cross toolchain prefix


ARCHES: dict[str, Arch] = {a.uname: a for a in (
    # No CMPXCHG16B for x86 guests: qemu 7.2's TCG corrupts EFLAGS after SLUB's `cmpxchg16b %gs:`, and
    # 6.12.95+deb12 double-faults in kmem_cache_alloc in most boots (4 of 4 boot without it, 1 of 3 with).
    Arch("x86_64", "amd64", "x86_64-linux-gnu", "x86", "x86", "__x64_sys_", (4, 17),
         "qemu-system-x86_64", "q35", "max,-cx16", "ttyS0", "CONFIG_SERIAL_8250_CONSOLE", "x86_64-linux-gnu"),
    # arm64's virt board has a PL011 UART, not an 8250.
    Arch("aarch64", "arm64", "aarch64-linux-gnu", "arm64", "arm64", "__arm64_sys_", (4, 19),
         "qemu-system-aarch64", "virt", "max", "ttyAMA0", "CONFIG_SERIAL_AMBA_PL011_CONSOLE", "aarch64-linux-gnu"),
)}

