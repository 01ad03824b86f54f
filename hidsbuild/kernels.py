"""Where kernels.yaml is parsed: the toolchain pin, programs, variant axes and target kernels.

kernels.yaml is data, never code: every value that reaches apt, a sources.list, a compiler
command line or a file path is checked against a strict pattern first. Every error names the
file, the line and the key, and is raised before any work starts. Parsing is linear in the
file's size: the YAML event stream is built into plain dicts and lists by one loop, with no
anchors, aliases or custom tags, and every cross-check is a dict lookup.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hids_bytecode.arches import ARCHES
from packaging.version import InvalidVersion, Version

from .distros import DEFAULT, DISTROS, Distro
from .distros.debian import PACKAGE as _PACKAGE
from .distros.debian import PACKAGE_WHAT as _PACKAGE_WHAT
from .distros.debian import SUITE as _SUITE
from .distros.debian import SUITE_WHAT as _SUITE_WHAT
from .distros.debian import VERSION_SYNTAX as _VERSION_SYNTAX
from .errors import ConfigError

__all__ = ["Toolchain", "Program", "Variant", "Kernel", "CoreTarget", "Matrix", "load_matrix", "CFLAG_RULES"]

VARIANT_AXES = ("syscall_wrapper", "debug")
_SOURCE = re.compile(r"(?![/-])[A-Za-z0-9_./+-]+")
_PROGRAM = re.compile(r"[a-z][a-z0-9_]*")
# Extra compiler flags may only define or undefine macros and tune warnings: nothing that names
# a file, a plugin, an output, an include path or changes code generation (-O is the build's).
CFLAG_RULES = {
    "-D<NAME>[=<value>]": r"-D[A-Za-z_][A-Za-z0-9_]*(?:=[A-Za-z0-9_.+-]*)?",
    "-U<NAME>": r"-U[A-Za-z_][A-Za-z0-9_]*",
    "-W<warning>, -Wno-<warning>, -W<warning>=<n>": r"-W(?:no-)?[a-z][a-z0-9-]*(?:=[A-Za-z0-9_-]+)?",
}
_CFLAG = re.compile("|".join(f"(?:{rule})" for rule in CFLAG_RULES.values()))
_PASSTHROUGH_WARNINGS = {"-Wa", "-Wl", "-Wp"}  # -Wa,/-Wl,/-Wp, hand options to other tools
# Tab, LF and CR are the only C0 controls YAML text needs; DEL, C1 and the Unicode line
# separators are refused too, as is a byte-order mark anywhere but at the start.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]|(?<!^)\ufeff")
_MAX_DEPTH = 16
_SHOW = 60

_STR, _BOOL, _MAP_TAG, _SEQ_TAG, _MERGE = (f"tag:yaml.org,2002:{t}" for t in ("str", "bool", "map", "seq", "merge"))
_PLAIN_SCALAR_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("int", "float", "null", "timestamp")}


@dataclass(frozen=True)
class Toolchain:
    suite: str
    clang: int
    # (package, exact Debian version) of everything in the image that shapes an object; empty only
    # in a matrix that is parsed but never built (the build refuses it and says how to pin).
    packages: tuple[tuple[str, str], ...] = ()


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
    distro: str = DEFAULT  # a key of distros.DISTROS: where the packages come from and how they are laid out

    @property
    def packaging(self) -> Distro:
        return DISTROS[self.distro]

    @property
    def deb_arch(self) -> str:
        return ARCHES[self.arch].debian

    @property
    def src_arch(self) -> str:
        return ARCHES[self.arch].src_arch

    @property
    def upstream(self) -> str:
        """Upstream kernel version, e.g. 6.1.176 for Debian's 6.1.176-1."""
        return self.packaging.upstream(self)

    @property
    def flavour(self) -> str:
        return self.packaging.flavour(self.release)


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


def _show(value: Any) -> str:
    """repr of a value for an error line: escaped and bounded, whatever the file held."""
    text = repr(value)
    return text if len(text) <= _SHOW else text[:_SHOW] + "...'"


def _label(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_.+-]{1,64}", key) else _show(key)


def _join(where: str, key: str) -> str:
    return f"{where}.{_label(key)}" if where else _label(key)


class _Map(dict):
    line: int
    key_lines: dict[str, int]


class _Seq(list):
    line: int
    item_lines: list[int]


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """libyaml's parser (when built in) with YAML 1.2 booleans: only `true` and `false`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|false)$"), list("tf"))


class _Reader:
    """Builds the document from YAML events and gives typed access raising ConfigError."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def fail(self, line: int | None, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, line, key, message)

    def text(self, data: bytes) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(data.count(b"\n", 0, exc.start) + 1, "(file)",
                            f"invalid UTF-8 at byte {exc.start}") from None
        bad = _CONTROL.search(text)
        if bad:
            raise self.fail(text.count("\n", 0, bad.start()) + 1, "(file)",
                            f"control character U+{ord(bad.group()):04X} is not allowed")
        return text

    def document(self, text: str) -> Any:
        loader = _Loader(text)
        try:
            return self._build(loader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise self.fail(mark.line + 1 if mark else None, "(syntax)", str(exc.problem or exc.context)) from None
        except yaml.YAMLError as exc:
            raise self.fail(None, "(syntax)", str(exc).splitlines()[0]) from None
        finally:
            loader.dispose()

    def _build(self, loader: yaml.SafeLoader) -> Any:
        # One loop over the events, no recursion: depth is bounded, an alias is refused where it
        # appears. Frames of open collections: [container, label, pending key, its line]; labels
        # are made only for collections and errors, scalars are the bulk of the file.
        stack: list[list[Any]] = []
        root: Any = None
        documents = 0
        tags: dict[str, str] = {}  # plain scalar -> resolved tag; kernels.yaml repeats its values
        while True:
            event = loader.get_event()
            kind = type(event)
            if kind is yaml.ScalarEvent:
                if event.anchor is not None:
                    raise self._anchor(stack, event)
                if event.tag is None and event.implicit[0]:
                    tag = tags.get(event.value)
                    if tag is None:
                        tag = tags[event.value] = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                    value: Any = event.value if tag == _STR else self._scalar(loader, event, tag, stack)
                elif event.tag in (None, "!", _STR):
                    value = event.value
                else:
                    value = self._scalar(loader, event, event.tag, stack)
            elif kind is yaml.MappingEndEvent or kind is yaml.SequenceEndEvent:
                stack.pop()
                continue
            elif kind is yaml.MappingStartEvent or kind is yaml.SequenceStartEvent:
                if event.anchor is not None:
                    raise self._anchor(stack, event)
                default = _MAP_TAG if kind is yaml.MappingStartEvent else _SEQ_TAG
                label = self._where(stack)
                if event.tag not in (None, "!", default):
                    raise self.fail(event.start_mark.line + 1, label or "(document)",
                                    f"tag {_show(event.tag)} is not allowed")
                value = _Map() if default == _MAP_TAG else _Seq()
                value.line = event.start_mark.line + 1
                if default == _MAP_TAG:
                    value.key_lines = {}
                else:
                    value.item_lines = []
            elif kind is yaml.AliasEvent:
                raise self.fail(event.start_mark.line + 1, self._where(stack) or "(document)",
                                f"alias *{_label(event.anchor)}: anchors and aliases are not allowed")
            elif kind is yaml.DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise self.fail(event.start_mark.line + 1, "(document)", "only one YAML document is allowed")
                continue
            elif kind is yaml.StreamEndEvent:
                return root
            else:  # stream start, document end
                continue

            line = event.start_mark.line + 1
            if not stack:
                root = value
            else:
                frame = stack[-1]
                container = frame[0]
                if type(container) is _Seq:
                    container.append(value)
                    container.item_lines.append(line)
                elif frame[2] is None:
                    self._key(frame, value, line)
                else:
                    container[frame[2]] = value
                    container.key_lines[frame[2]] = frame[3]
                    frame[2] = None
            if type(value) is _Map or type(value) is _Seq:
                if len(stack) >= _MAX_DEPTH:
                    raise self.fail(line, label or "(document)", f"nested deeper than {_MAX_DEPTH} levels")
                stack.append([value, label, None, 0])

    @staticmethod
    def _where(stack: list[list[Any]]) -> str:
        """Label of the next node in the innermost open collection."""
        if not stack:
            return ""
        container, label, key, _ = stack[-1]
        if type(container) is _Seq:
            return f"{label}[{len(container)}]"
        return label if key is None else _join(label, key)

    def _anchor(self, stack: list[list[Any]], event: yaml.NodeEvent) -> ConfigError:
        return self.fail(event.start_mark.line + 1, self._where(stack) or "(document)",
                         f"anchor &{_label(event.anchor)}: anchors and aliases are not allowed")

    def _key(self, frame: list[Any], value: Any, line: int) -> None:
        container, label = frame[0], frame[1] or "(document)"
        if isinstance(value, (_Map, _Seq)):
            raise self.fail(line, label, "a mapping or sequence as a key is not allowed")
        if not isinstance(value, str):
            raise self.fail(line, label, f"keys are strings, not {_show(value)}")
        if value in container:
            raise self.fail(line, _join(frame[1], value), "duplicate key")
        frame[2], frame[3] = value, line

    def _scalar(self, loader: yaml.SafeLoader, event: yaml.ScalarEvent, tag: str, stack: list[list[Any]]) -> Any:
        if tag == _STR:
            return event.value
        if tag == _BOOL:
            if event.value not in ("true", "false"):
                raise self.fail(event.start_mark.line + 1, self._where(stack) or "(document)",
                                f"expected true or false, got {_show(event.value)}")
            return event.value == "true"
        if tag == _MERGE:
            raise self.fail(event.start_mark.line + 1, self._where(stack) or "(document)",
                            "merge keys (<<) are not allowed")
        if tag in _PLAIN_SCALAR_TAGS:
            node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark)
            return loader.yaml_constructors[tag](loader, node)
        raise self.fail(event.start_mark.line + 1, self._where(stack) or "(document)",
                        f"tag {_show(tag)} is not allowed")

    def mapping(self, node: Any, line: int, where: str) -> _Map:
        if not isinstance(node, _Map):
            raise self.fail(line, where or "(document)", f"expected a mapping, got {_show(node)}")
        return node

    def get(self, node: _Map, key: str, where: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in node:
            if default is not ...:
                return default
            raise self.fail(node.line, _join(where, key), "missing key")
        value = node[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = "/".join(t.__name__.lstrip("_").replace("Map", "mapping").replace("Seq", "list") for t in kinds)
            raise self.fail(node.key_lines[key], _join(where, key), f"expected {names}, got {_show(value)}")
        return value

    def matching(self, node: _Map, key: str, where: str, pattern: re.Pattern[str], what: str,
                 default: Any = ...) -> Any:
        value = self.get(node, key, where, str, default)
        if value is not default and not pattern.fullmatch(value):
            raise self.fail(node.key_lines[key], _join(where, key), f"{_show(value)} is not {what}")
        return value

    def unknown_keys(self, node: _Map, allowed: set[str], where: str) -> None:
        for key in node:
            if key not in allowed:
                raise self.fail(node.key_lines[key], _join(where, key),
                                f"unknown key {_label(key)} (expected one of {', '.join(sorted(allowed))})")


def _pins(r: _Reader, tc: _Map, clang: int) -> tuple[tuple[str, str], ...]:
    """toolchain.packages: package -> exact Debian version; clang-N, llvm-N and bpftool at least."""
    node = r.get(tc, "packages", "toolchain", _Map, None)
    if node is None:
        return ()
    pins = []
    for name in node:
        where = f"toolchain.packages.{_label(name)}"
        if not isinstance(name, str) or not _PACKAGE.fullmatch(name):
            raise r.fail(node.key_lines[name], where, f"{_show(name)} is not {_PACKAGE_WHAT}")
        pins.append((name, r.matching(node, name, "toolchain.packages", _VERSION_SYNTAX, "a Debian version")))
    missing = [p for p in (f"clang-{clang}", f"llvm-{clang}", "bpftool") if p not in node]
    if missing:
        raise r.fail(node.line, "toolchain.packages", f"must pin {', '.join(missing)} (the packages that make objects)")
    return tuple(sorted(pins))


def _strings(r: _Reader, node: _Map, key: str, where: str, pattern: re.Pattern[str], what: str,
             default: Any = ...) -> tuple[str, ...]:
    seq = r.get(node, key, where, _Seq, default)
    if seq is default:
        return default
    for i, item in enumerate(seq):
        if not isinstance(item, str) or not pattern.fullmatch(item):
            raise r.fail(seq.item_lines[i], f"{_join(where, key)}[{i}]", f"{_show(item)} is not {what}")
    return tuple(seq)


def _variants(r: _Reader, node: _Map, where: str, axes: dict[str, tuple[bool, ...]] | None) -> tuple[Variant, ...]:
    r.unknown_keys(node, set(VARIANT_AXES), where)
    values: dict[str, tuple[bool, ...]] = {}
    for axis in VARIANT_AXES:
        if axes is not None and axis not in node:
            values[axis] = axes[axis]
            continue
        seq = r.get(node, axis, where, _Seq)
        if not seq:
            raise r.fail(node.key_lines[axis], f"{where}.{axis}", "expected at least one value")
        for i, item in enumerate(seq):
            if not isinstance(item, bool):
                raise r.fail(seq.item_lines[i], f"{where}.{axis}[{i}]", f"expected true or false, got {_show(item)}")
            if axes is not None and item not in axes[axis]:
                raise r.fail(seq.item_lines[i], f"{where}.{axis}[{i}]",
                             f"{str(item).lower()} is not among the matrix's {axis} values")
        if len(set(seq)) != len(seq):
            raise r.fail(node.key_lines[axis], f"{where}.{axis}", "duplicate value")
        values[axis] = tuple(seq)
    return tuple(Variant(w, d) for w, d in itertools.product(values["syscall_wrapper"], values["debug"]))


def _cflags(r: _Reader, node: _Map, where: str) -> tuple[str, ...]:
    flags = _strings(r, node, "cflags", where, re.compile(r".+", re.S), "a compiler flag", ())
    for i, flag in enumerate(flags):
        if not _CFLAG.fullmatch(flag) or flag in _PASSTHROUGH_WARNINGS:
            raise r.fail(node["cflags"].item_lines[i], f"{where}.cflags[{i}]",
                         f"{_show(flag)} is not an allowed flag (only {'; '.join(CFLAG_RULES)})")
    return flags


class _Fields:
    """A kernel entry's keys, read strictly, for the distro module that owns them (distros.Fields)."""

    def __init__(self, r: _Reader, node: _Map, where: str, root: Path) -> None:
        self.r, self.node, self.where, self.root = r, node, where, root

    def text(self, key: str, pattern: re.Pattern[str], what: str, default: Any = ...) -> Any:
        return self.r.matching(self.node, key, self.where, pattern, what, default)

    def names(self, key: str, pattern: re.Pattern[str], what: str, default: Any = ...) -> Any:
        return _strings(self.r, self.node, key, self.where, pattern, what, default)

    def fail(self, key: str, message: str) -> ConfigError:
        return self.r.fail(self.node.key_lines.get(key, self.node.line), _join(self.where, key), message)

    def show(self, value: Any) -> str:
        return _show(value)


def _kernel(r: _Reader, node: _Map, where: str, root: Path) -> Kernel:
    distro_name = r.get(node, "distro", where, str, DEFAULT)
    distro = DISTROS.get(distro_name)
    if distro is None:
        raise r.fail(node.key_lines["distro"], f"{where}.distro",
                     f"unknown distro {_show(distro_name)} (expected one of {', '.join(DISTROS)})")
    r.unknown_keys(node, {"distro", "release", "arch", "cflags", *distro.keys}, where)
    release = r.get(node, "release", where, str)
    arch = r.get(node, "arch", where, str)
    if arch not in ARCHES:
        raise r.fail(node.key_lines["arch"], f"{where}.arch",
                     f"unknown arch {_show(arch)} (expected one of {', '.join(ARCHES)})")
    source = distro.parse(_Fields(r, node, where, root), release, ARCHES[arch])
    return Kernel(release, arch, source.suite, source.version, source.headers, source.image,
                  _cflags(r, node, where), distro.name)


def _program(r: _Reader, root: Path, name: str, pnode: _Map, where: str,
             matrix_variants: tuple[Variant, ...], axes: dict[str, tuple[bool, ...]]) -> Program:
    r.unknown_keys(pnode, {"source", "variants"}, where)
    source = r.matching(pnode, "source", where, _SOURCE,
                        "a relative path (letters, digits, '_', '.', '/', '+', '-'; not starting with / or -)")
    line = pnode.key_lines["source"]
    resolved = (root / source).resolve()
    if not resolved.is_relative_to(root):
        raise r.fail(line, f"{where}.source", f"{_show(source)} resolves outside the repository ({root})")
    if not resolved.is_file():
        raise r.fail(line, f"{where}.source", f"no such file {_show(source)}")
    vnode = r.get(pnode, "variants", where, _Map, None)
    variants = matrix_variants if vnode is None else _variants(r, vnode, f"{where}.variants", axes)
    return Program(name, source, variants)


def load_matrix(path: str | Path) -> Matrix:
    """Parse and check kernels.yaml; raise ConfigError naming file, line and key."""
    path = Path(path)
    r = _Reader(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise r.fail(None, "(file)", f"cannot read: {exc.strerror}") from None
    doc = r.mapping(r.document(r.text(data)), 1, "(document)")
    r.unknown_keys(doc, {"toolchain", "programs", "variants", "kernels", "core"}, "")

    tc = r.get(doc, "toolchain", "", _Map)
    r.unknown_keys(tc, {"suite", "clang", "packages"}, "toolchain")
    clang = r.get(tc, "clang", "toolchain", int)
    if not 10 <= clang <= 99:
        raise r.fail(tc.key_lines["clang"], "toolchain.clang", f"expected a clang major version (10-99), got {clang}")
    toolchain = Toolchain(r.matching(tc, "suite", "toolchain", _SUITE, _SUITE_WHAT), clang, _pins(r, tc, clang))

    axes_node = r.get(doc, "variants", "", _Map)
    matrix_variants = _variants(r, axes_node, "variants", None)
    axes = {a: tuple(dict.fromkeys(getattr(v, a) for v in matrix_variants)) for a in VARIANT_AXES}

    progs_node = r.get(doc, "programs", "", _Map)
    if not progs_node:
        raise r.fail(progs_node.line, "programs", "expected at least one program")
    root = path.parent.resolve()
    programs = []
    for name, pnode in progs_node.items():
        where = _join("programs", name)
        if not _PROGRAM.fullmatch(name):
            raise r.fail(progs_node.key_lines[name], where, "program names are lower-case identifiers")
        pnode = r.mapping(pnode, progs_node.key_lines[name], where)
        programs.append(_program(r, root, name, pnode, where, matrix_variants, axes))

    kseq = r.get(doc, "kernels", "", _Seq)
    if not kseq:
        raise r.fail(kseq.line, "kernels", "expected at least one kernel")
    kernels: dict[tuple[str, str], Kernel] = {}
    for i, knode in enumerate(kseq):
        where = f"kernels[{i}]"
        kernel = _kernel(r, r.mapping(knode, kseq.item_lines[i], where), where, root)
        if (kernel.release, kernel.arch) in kernels:
            raise r.fail(kseq.item_lines[i], f"{where}.release", f"duplicate kernel {kernel.release} ({kernel.arch})")
        kernels[(kernel.release, kernel.arch)] = kernel

    core: list[CoreTarget] = []
    core_node = r.get(doc, "core", "", _Map, None)
    if core_node is not None:
        for arch, cnode in core_node.items():
            where = _join("core", arch)
            if arch not in ARCHES:
                raise r.fail(core_node.key_lines[arch], where,
                             f"unknown arch {_show(arch)} (expected one of {', '.join(ARCHES)})")
            cnode = r.mapping(cnode, core_node.key_lines[arch], where)
            r.unknown_keys(cnode, {"btf_from"}, where)
            release = r.get(cnode, "btf_from", where, str)
            if (release, arch) not in kernels:
                raise r.fail(cnode.key_lines["btf_from"], f"{where}.btf_from",
                             f"{_show(release)} is not a {arch} kernel of this matrix")
            core.append(CoreTarget(arch, kernels[(release, arch)]))
    return Matrix(path, toolchain, tuple(programs), tuple(kernels.values()), tuple(core))


def parse_version(text: str) -> Version:
    """Upstream kernel version as a comparable Version (e.g. '6.19.0')."""
    try:
        return Version(text)
    except InvalidVersion:
        raise ValueError(f"not a kernel version: {text!r}") from None
