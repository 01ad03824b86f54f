"""Units of work, (program, kernel, variant), with their exact compiler arguments and cache keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .headers import KernelHeaders
from .kernels import ARCHES, Kernel, Matrix, Program, Variant, parse_version

__all__ = ["Unit", "enumerate_units", "skip_reason", "compile_args", "pch_args", "cache_key", "shard",
           "PCH_EXCLUDED_MACROS", "SRC_DIR", "HEADERS_DIR", "BTF_DIR"]

# Fixed paths inside the container: objects never depend on where the checkout lives.
SRC_DIR = "/src"
HEADERS_DIR = "/headers"
BTF_DIR = "/btf"
_MS_EXTENSIONS_FROM = parse_version("6.19")

_COMMON_FLAGS = (
    "-O2", "-g",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-jump-tables",
    "-fdebug-prefix-map=/src=.", "-fdebug-compilation-dir=.", "-fno-ident",
    "-Wall", "-Wno-unused-value", "-Wno-pointer-sign", "-Wno-compare-distinct-pointer-types",
    "-Wno-gnu-variable-sized-type-not-at-end", "-Wno-address-of-packed-member", "-Wno-tautological-compare",
    "-Wno-unknown-warning-option", "-Wno-unused-function", "-Wno-frame-address",
)


@dataclass(frozen=True)
class Unit:
    program: Program
    arch: str
    variant: Variant
    kernel: Kernel | None = None  # None: the CO-RE build of this arch

    @property
    def target(self) -> str:
        return self.kernel.release if self.kernel else f"core-{self.arch}"

    @property
    def id(self) -> str:
        return f"{self.program.name}/{self.target}/{self.variant.id}"

    @property
    def kind(self) -> str:
        return "exact" if self.kernel else "core"


def enumerate_units(matrix: Matrix) -> list[Unit]:
    """Every unit of the matrix in a stable order: kernels as listed, then CO-RE targets (which
    are w1 only). Units that cannot run on their kernel are dropped later, by `skip_reason`, once
    the kernel's .config is at hand."""
    units = [Unit(p, k.arch, v, k) for k in matrix.kernels for p in matrix.programs for v in p.variants]
    units += [
        Unit(p, c.arch, v) for c in matrix.core for p in matrix.programs for v in p.variants if v.syscall_wrapper
    ]
    return units


WRAPPER_OPTION = "CONFIG_ARCH_HAS_SYSCALL_WRAPPER"


def skip_reason(unit: Unit, config: dict[str, str] | None) -> str | None:
    """Why the unit is not built, given its kernel's .config (None: not known yet): the no-wrapper
    variant on a kernel with the syscall wrapper, where syscalls enter through __<arch>_sys_* and
    the variant's sys_* kprobes can never attach, so its object would only repeat the tracepoint
    path of the wrapper variant. None when the unit can run (or the .config is unknown: built)."""
    if unit.kernel is None or unit.variant.syscall_wrapper or config is None or config.get(WRAPPER_OPTION) != "y":
        return None
    return f"{WRAPPER_OPTION}=y: the sys_* kprobes of USE_SYSCALL_WRAPPER=0 can never attach on this kernel"


def shard(units: list[Unit], index: int, count: int) -> list[Unit]:
    """Deterministic slice K/N of the matrix, by whole kernels so a kernel's headers are fetched once."""
    targets = sorted({u.target for u in units})
    mine = {t for i, t in enumerate(targets) if i % count == index - 1}
    return [u for u in units if u.target in mine]


def _variant_defines(variant: Variant) -> list[str]:
    return [f"-DUSE_SYSCALL_WRAPPER={int(variant.syscall_wrapper)}", f"-DDEBUG={int(variant.debug)}"]


# Variant macros left off a precompiled header's command line, so that one PCH per kernel serves
# every variant. Kernel headers test whether DEBUG is defined (printk.h, dynamic_debug.h), so the
# PCH defines them while it parses and undefines them after (hidsbuild/pch.py); compile_unit.sh
# drops a PCH when a file it read tests one's value.
PCH_EXCLUDED_MACROS = ("USE_SYSCALL_WRAPPER", "DEBUG")


def pch_args(args: list[str]) -> list[str]:
    """The arguments of the precompiled header that units with `args` may share: theirs without
    the source (always last) and the excluded variant macros."""
    excluded = tuple(f"-D{m}=" for m in PCH_EXCLUDED_MACROS)
    return [a for a in args[:-1] if not a.startswith(excluded)]


def compile_args(unit: Unit, headers: KernelHeaders | None, clang_major: int) -> list[str]:
    """clang arguments for the unit, minus `-emit-llvm -c -o OUT` which the runner adds."""
    source = f"{SRC_DIR}/{unit.program.name}.c"
    if unit.kernel is None:
        src_arch = ARCHES[unit.arch][1]
        return ["-target", "bpf", f"-D__TARGET_ARCH_{src_arch}", "-DHIDS_CORE=1", f"-I{BTF_DIR}/{unit.arch}",
                *_variant_defines(unit.variant), *_COMMON_FLAGS, source]
    assert headers is not None
    kernel = unit.kernel
    arch = kernel.src_arch
    common, flavour = f"{HEADERS_DIR}/{headers.common}", f"{HEADERS_DIR}/{headers.flavour}"
    # Debian's clang-N keeps its own headers (stdarg.h, ...) here; kernel builds use them the same way.
    args = ["-nostdinc", "-isystem", f"/usr/lib/llvm-{clang_major}/lib/clang/{clang_major}/include"]
    if kernel.arch == "aarch64":
        args.append("--target=aarch64-linux-gnu")
    args += [
        f"-I{flavour}/arch/{arch}/include/generated", f"-I{common}/arch/{arch}/include",
        f"-I{flavour}/include", f"-I{common}/include",
        f"-I{common}/arch/{arch}/include/uapi", f"-I{flavour}/arch/{arch}/include/generated/uapi",
        f"-I{common}/include/uapi", f"-I{flavour}/include/generated/uapi",
        "-include", f"{common}/include/linux/kconfig.h",
        "-D__KERNEL__", "-D__BPF_TRACING__", f"-D__TARGET_ARCH_{arch}", '-DKBUILD_MODNAME="hids"',
    ]
    # Paths in .BTF line info then read /usr/src/linux-headers-*, as on a host with the
    # packages installed, so a runtime compile there gives the same bytes.
    args += [f"-fdebug-prefix-map={HEADERS_DIR}/{i}=" for i in range(len(headers.packages))]
    if parse_version(kernel.upstream) >= _MS_EXTENSIONS_FROM:
        args.append("-fms-extensions")
    return [*args, *_variant_defines(unit.variant), *_COMMON_FLAGS, *kernel.cflags, source]


def cache_key(unit: Unit, args: list[str], source_sha256: str, headers_identity: str, toolchain_recipe: str) -> str:
    """Content address of a unit's object: every input that can change its bytes."""
    material = {
        "source": source_sha256,
        "headers": headers_identity,
        "args": args,
        "toolchain": toolchain_recipe,
        "arch": unit.arch,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
