"""Units of work, (program, kernel, variant), with their compile recipes and cache keys."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace

from hids_bytecode.arches import ARCHES
from hids_bytecode.recipe import Roots, Step, recipe_json, render

from .headers import KernelHeaders
from .kernels import Kernel, Matrix, Program, Variant, parse_version

__all__ = ["Unit", "enumerate_units", "skip_reason", "clang_flags", "compile_recipe", "container_roots",
           "rendered_flags", "pch_args", "cache_key", "shard", "PCH_EXCLUDED_MACROS", "SRC_DIR", "HEADERS_DIR",
           "BTF_DIR"]

# Fixed paths inside the container: objects never depend on where the checkout lives.
SRC_DIR = "/src"
HEADERS_DIR = "/headers"
BTF_DIR = "/btf"

_COMMON_FLAGS = (
    "-O2", "-g",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-jump-tables",
    "-fdebug-prefix-map={source_dir}=.", "-fdebug-compilation-dir=.", "-fno-ident",
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


# Variant macros left off a precompiled header's command line, so that one PCH per kernel serves
# every variant. Kernel headers test whether DEBUG is defined (printk.h, dynamic_debug.h), so the
# PCH defines them while it parses and undefines them after (hidsbuild/pch.py); compile_unit.sh
# drops a PCH when a file it read tests one's value.
PCH_EXCLUDED_MACROS = ("USE_SYSCALL_WRAPPER", "DEBUG")
_VARIANT_DEFINES = ("-DUSE_SYSCALL_WRAPPER={wrapper}", "-DDEBUG={debug}")


def pch_args(flags: list[str]) -> list[str]:
    """The arguments of the precompiled header that units with these (rendered) clang `flags` may
    share: theirs without the excluded variant macros."""
    excluded = tuple(f"-D{m}=" for m in PCH_EXCLUDED_MACROS)
    return [a for a in flags if not a.startswith(excluded)]


def _literal(flag: str) -> str:
    """A flag from kernels.yaml as a recipe argument: its braces are not placeholders."""
    return flag.replace("{", "{{").replace("}", "}}")


def clang_flags(unit: Unit) -> tuple[str, ...]:
    """The unit's clang flags as recipe arguments (loader/hids_bytecode/recipe.py), without the
    source and output: the same for every program and variant of a kernel."""
    arch = ARCHES[unit.arch]
    if unit.kernel is None:
        return ("-target", "bpf", f"-D__TARGET_ARCH_{arch.target_arch}", "-DHIDS_CORE=1", "-I{btf}",
                *_VARIANT_DEFINES, *_COMMON_FLAGS)
    tree = arch.src_arch
    # Debian's clang-N keeps its own headers (stdarg.h, ...) in its resource dir; kernel builds use them the same way.
    args = ["-nostdinc", "-isystem", "{clang_include}", f"--target={arch.clang_target}",
            f"-I{{flavour}}/arch/{tree}/include/generated", f"-I{{common}}/arch/{tree}/include",
            "-I{flavour}/include", "-I{common}/include",
            f"-I{{common}}/arch/{tree}/include/uapi", f"-I{{flavour}}/arch/{tree}/include/generated/uapi",
            "-I{common}/include/uapi", "-I{flavour}/include/generated/uapi",
            "-include", "{common}/include/linux/kconfig.h",
            "-D__KERNEL__", "-D__BPF_TRACING__", f"-D__TARGET_ARCH_{arch.target_arch}", '-DKBUILD_MODNAME="hids"',
            # Paths in .BTF line info then read /usr/src/linux-headers-*, as on a host with the
            # packages installed, so a runtime compile there gives the same bytes.
            "-fdebug-prefix-map={header_root}=",
            # Kernels from 6.19 build with -fms-extensions (their headers need it); earlier ones without.
            "{since:6.19}-fms-extensions"]
    return (*args, *_VARIANT_DEFINES, *_COMMON_FLAGS, *map(_literal, unit.kernel.cflags))


def compile_recipe(unit: Unit) -> tuple[Step, ...]:
    """The unit's compile steps: clang to LLVM IR, llc to a BPF object, DWARF stripped (.BTF and
    .BTF.ext stay)."""
    return (Step("clang", (*clang_flags(unit), "{source}", "-emit-llvm", "-c", "-o", "{bitcode}")),
            Step("llc", ("-march=bpf", "-mcpu=v2", "-filetype=obj", "-o", "{object}", "{bitcode}")),
            Step("llvm-strip", ("-g", "{object}")))


def rendered_flags(unit: Unit, roots: Roots) -> list[str]:
    """The clang flags the unit's compile runs with at `roots`, without source and output: what a
    shared precompiled header is built from, and (then the source) what provenance records."""
    return render((Step("clang", clang_flags(unit)),), roots)[0][1:]


def container_roots(unit: Unit, headers: KernelHeaders | None, clang_major: int) -> Roots:
    """Where the unit's inputs sit inside the toolchain container (the compile's own files,
    `bitcode` and `object`, are set per batch)."""
    base = Roots(source=f"{SRC_DIR}/{unit.program.name}.c", source_dir=SRC_DIR,
                 wrapper=unit.variant.syscall_wrapper, debug=unit.variant.debug)
    if unit.kernel is None:
        return replace(base, btf=f"{BTF_DIR}/{unit.arch}")
    assert headers is not None
    return replace(base, common=f"{HEADERS_DIR}/{headers.common}", flavour=f"{HEADERS_DIR}/{headers.flavour}",
                   header_roots=tuple(f"{HEADERS_DIR}/{i}" for i in range(len(headers.packages))),
                   clang_include=f"/usr/lib/llvm-{clang_major}/lib/clang/{clang_major}/include",
                   kernel=parse_version(unit.kernel.upstream).release)


def cache_key(unit: Unit, steps: tuple[Step, ...], roots: Roots, source_sha256: str, headers_identity: str,
              toolchain_id: str) -> str:
    """Content address of a unit's object: every input that can change its bytes (the recipe and
    what fills it in, but not where the batch puts its output)."""
    material = {
        "source": source_sha256,
        "headers": headers_identity,
        "recipe": recipe_json(steps),
        "roots": {k: v for k, v in roots.as_dict().items() if k not in ("bitcode", "object")},
        "toolchain": toolchain_id,
        "arch": unit.arch,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
