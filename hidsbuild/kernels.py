"""Where kernels.yaml is parsed: the toolchain pin, programs, variant axes and target kernels.

Every error names the file, the line and the key, and is raised before any work starts.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.version import InvalidVersion, Version

from .errors import ConfigError

__all__ = ["ARCHES", "Toolchain", "Program", "Variant", "Kernel", "CoreTarget", "Matrix", "load_matrix"]

# uname -m -> (Debian architecture, kernel source tree arch)
ARCHES = {"x86_64": ("amd64", "x86"), "aarch64": ("arm64", "arm64")}
VARIANT_AXES = ("syscall_wrapper", "debug")
_RELEASE = re.compile(r"^(?P<abi>\d+\.\d+[0-9A-Za-z.+~-]*?)-(?P<flavour>(?:cloud-|rt-)?(?:amd64|arm64))$")
_DEBIAN_VERSION = re.compile(r"^(?P<upstream>\d+\.\d+(?:\.\d+)?)[-~+]")


@dataclass(frozen=True)
class Toolchain:
    suite: str
    clang: int


@dataclass(frozen=True)
class Variant:
    syscall_wrapper: bool
    debug: bool

    @property
    def id(self) -> str:
        return f"w{int(self.syscall_wrapper)}d{int(self.debug)}"

    def as_dict(self) -> dict[str, bool]:
        return {"syscall_wrapper": self.syscall_wrapper, "debug": self.debug}


@dataclass(frozen=True)
class Program:
    name: str
    source: str
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class Kernel:
    release: str
    arch: str
    suite: str
    version: str
    headers: tuple[str, ...]
    image: str
    cflags: tuple[str, ...]

    @property
    def deb_arch(self) -> str:
        return ARCHES[self.arch][0]

    @property
    def src_arch(self) -> str:
        return ARCHES[self.arch][1]

    @property
    def upstream(self) -> str:
        """Upstream kernel version, e.g. 6.1.176 for Debian's 6.1.176-1."""
        return _DEBIAN_VERSION.match(self.version).group("upstream")  # type: ignore[union-attr]

    @property
    def flavour(self) -> str:
        return _RELEASE.match(self.release).group("flavour")  # type: ignore[union-attr]


@dataclass(frozen=True)
class CoreTarget:
    """A CO-RE build for one arch, from the BTF of a pinned kernel of the matrix."""

    arch: str
    btf_from: Kernel


@dataclass(frozen=True)
class Matrix:
    path: Path
    toolchain: Toolchain
    programs: tuple[Program, ...]
    kernels: tuple[Kernel, ...]
    core: tuple[CoreTarget, ...]


class _LineLoader(yaml.SafeLoader):
    """Keeps each mapping's and sequence item's line so errors can point at them."""


class _Map(dict):
    line: int
    key_lines: dict[str, int]


class _Seq(list):
    line: int
    item_lines: list[int]


def _construct_map(loader: _LineLoader, node: yaml.MappingNode) -> _Map:
    result = _Map()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in result:
            raise ConfigError(loader.name, key_node.start_mark.line + 1, str(key), "duplicate key")
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_seq(loader: _LineLoader, node: yaml.SequenceNode) -> _Seq:
    result = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


class _Reader:
    """Typed access to the parsed document, raising ConfigError with file, line and key."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, line: int | None, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, line, key, message)

    def get(self, node: Any, key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if not isinstance(node, _Map):
            raise self.fail(getattr(node, "line", None), where, "expected a mapping")
        if key not in node:
            if default is not ...:
                return default
            raise self.fail(node.line, f"{where}.{key}" if where else key, "missing key")
        value = node[key]
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool) and bool not in _as_tuple(kind)):
            names = "/".join(t.__name__ for t in _as_tuple(kind))
            raise self.fail(node.key_lines[key], f"{where}.{key}" if where else key, f"expected {names}, got {value!r}")
        return value

    def unknown_keys(self, node: _Map, allowed: set[str], where: str) -> None:
        for key in node:
            if key not in allowed:
                label = f"{where}.{key}" if where else str(key)
                raise self.fail(node.key_lines[key], label, f"unknown key (expected one of {', '.join(sorted(allowed))})")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _strings(r: _Reader, node: _Map, key: str, where: str, default: Any = ...) -> tuple[str, ...]:
    seq = r.get(node, key, where, list, default)
    if seq is default:
        return default
    for i, item in enumerate(seq):
        if not isinstance(item, str) or not item:
            raise r.fail(seq.item_lines[i], f"{where}.{key}[{i}]", f"expected a non-empty string, got {item!r}")
    return tuple(seq)


def _variants(r: _Reader, node: _Map, where: str, axes: dict[str, tuple[bool, ...]] | None) -> tuple[Variant, ...]:
    values: dict[str, tuple[bool, ...]] = {}
    for axis in VARIANT_AXES:
        if axes is not None and axis not in node:
            values[axis] = axes[axis]
            continue
        seq = r.get(node, axis, where, list)
        if not seq:
            raise r.fail(node.key_lines[axis], f"{where}.{axis}", "expected at least one value")
        for i, item in enumerate(seq):
            if not isinstance(item, bool):
                raise r.fail(seq.item_lines[i], f"{where}.{axis}[{i}]", f"expected true or false, got {item!r}")
            if axes is not None and item not in axes[axis]:
                raise r.fail(seq.item_lines[i], f"{where}.{axis}[{i}]", f"{item} is not among the matrix's {axis} values")
        if len(set(seq)) != len(seq):
            raise r.fail(node.key_lines[axis], f"{where}.{axis}", "duplicate value")
        values[axis] = tuple(seq)
    r.unknown_keys(node, set(VARIANT_AXES), where)
    return tuple(Variant(w, d) for w, d in itertools.product(values["syscall_wrapper"], values["debug"]))


def _kernel(r: _Reader, node: Any, where: str) -> Kernel:
    release = r.get(node, "release", where, str)
    if not _RELEASE.match(release):
        raise r.fail(node.key_lines["release"], f"{where}.release",
                     f"{release!r} is not a Debian kernel release as uname -r prints it (e.g. 6.1.0-50-cloud-amd64)")
    arch = r.get(node, "arch", where, str)
    if arch not in ARCHES:
        raise r.fail(node.key_lines["arch"], f"{where}.arch", f"unknown arch {arch!r} (expected one of {', '.join(ARCHES)})")
    flavour_arch = _RELEASE.match(release).group("flavour").rsplit("-", 1)[-1]  # type: ignore[union-attr]
    if flavour_arch != ARCHES[arch][0]:
        raise r.fail(node.key_lines["arch"], f"{where}.arch", f"{arch} does not match the release's {flavour_arch} flavour")
    suite = r.get(node, "suite", where, str)
    version = r.get(node, "version", where, str)
    if not _DEBIAN_VERSION.match(version):
        raise r.fail(node.key_lines["version"], f"{where}.version", f"{version!r} is not a Debian kernel package version (e.g. 6.1.176-1)")
    abi = _RELEASE.match(release).group("abi")  # type: ignore[union-attr]
    headers = _strings(r, node, "headers", where, (f"linux-headers-{release}", f"linux-headers-{abi}-common"))
    image = r.get(node, "image", where, str, f"linux-image-{release}-unsigned")
    cflags = _strings(r, node, "cflags", where, ())
    r.unknown_keys(node, {"release", "arch", "suite", "version", "headers", "image", "cflags"}, where)
    return Kernel(release, arch, suite, version, headers, image, cflags)


def load_matrix(path: str | Path) -> Matrix:
    """Parse and check kernels.yaml; raise ConfigError naming file, line and key."""
    path = Path(path)
    r = _Reader(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise r.fail(None, "(file)", f"cannot read: {exc.strerror}") from None
    loader = _LineLoader(text)
    loader.name = str(path)
    try:
        doc = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise r.fail(line, "(syntax)", str(exc.problem)) from None
    finally:
        loader.dispose()
    if not isinstance(doc, _Map):
        raise r.fail(1, "(document)", "expected a mapping with toolchain, programs, variants and kernels")
    r.unknown_keys(doc, {"toolchain", "programs", "variants", "kernels", "core"}, "")

    tc = r.get(doc, "toolchain", "", _Map)
    toolchain = Toolchain(r.get(tc, "suite", "toolchain", str), r.get(tc, "clang", "toolchain", int))
    r.unknown_keys(tc, {"suite", "clang"}, "toolchain")

    axes_node = r.get(doc, "variants", "", _Map)
    matrix_variants = _variants(r, axes_node, "variants", None)
    axes = {a: tuple(dict.fromkeys(getattr(v, a) for v in matrix_variants)) for a in VARIANT_AXES}

    progs_node = r.get(doc, "programs", "", _Map)
    if not progs_node:
        raise r.fail(progs_node.line, "programs", "expected at least one program")
    programs = []
    for name, pnode in progs_node.items():
        where = f"programs.{name}"
        if not re.fullmatch(r"[a-z][a-z0-9_]*", str(name)):
            raise r.fail(progs_node.key_lines[name], where, "program names are lower-case identifiers")
        source = r.get(pnode, "source", where, str)
        if not (path.parent / source).is_file():
            raise r.fail(pnode.key_lines["source"], f"{where}.source", f"no such file {source!r}")
        vnode = r.get(pnode, "variants", where, _Map, None)
        variants = matrix_variants if vnode is None else _variants(r, vnode, f"{where}.variants", axes)
        r.unknown_keys(pnode, {"source", "variants"}, where)
        programs.append(Program(str(name), source, variants))

    kseq = r.get(doc, "kernels", "", list)
    if not kseq:
        raise r.fail(kseq.line, "kernels", "expected at least one kernel")
    kernels: list[Kernel] = []
    for i, knode in enumerate(kseq):
        kernel = _kernel(r, knode, f"kernels[{i}]")
        if any(k.release == kernel.release and k.arch == kernel.arch for k in kernels):
            raise r.fail(kseq.item_lines[i], f"kernels[{i}].release", f"duplicate kernel {kernel.release} ({kernel.arch})")
        kernels.append(kernel)

    core: list[CoreTarget] = []
    core_node = r.get(doc, "core", "", _Map, None)
    if core_node is not None:
        for arch, cnode in core_node.items():
            where = f"core.{arch}"
            if arch not in ARCHES:
                raise r.fail(core_node.key_lines[arch], where, f"unknown arch {arch!r} (expected one of {', '.join(ARCHES)})")
            release = r.get(cnode, "btf_from", where, str)
            match = [k for k in kernels if k.release == release and k.arch == arch]
            if not match:
                raise r.fail(cnode.key_lines["btf_from"], f"{where}.btf_from", f"{release!r} is not a {arch} kernel of this matrix")
            r.unknown_keys(cnode, {"btf_from"}, where)
            core.append(CoreTarget(arch, match[0]))
    return Matrix(path, toolchain, tuple(programs), tuple(kernels), tuple(core))


def parse_version(text: str) -> Version:
    """Upstream kernel version as a comparable Version (e.g. '6.19.0')."""
    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(f"not a kernel version: {text!r}") from None
