"""The kernel crawler: which kernel releases Debian's archive serves now, and a kernels.yaml refresh.

It reads each suite's signed Packages index directly (see archive_index) and keeps only real
kernel builds. A real headers package is `linux-headers-<release>` whose release carries a
patch level or ABI (6.1.0-50-cloud-amd64, 6.12.117+deb13-cloud-arm64) and which depends on
its own `linux-headers-<abi>-common[-rt]`; the metapackages (linux-headers-cloud-arm64,
linux-headers-6.12-cloud-arm64) have neither: they only depend on a real one.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from debian.deb822 import Packages
from debian.debian_support import Version
from hids_bytecode.arches import ARCHES

from .archive_index import packages_index, packages_paragraphs, pool_served, verified_release
from .distros.debian import (
    ARCHIVE,
    DEBIAN,
    DEFAULT_SUITES,
    PATCH_LEVEL,
    Mirrors,
    common_headers,
    flavour_name,
    host_mirrors,
    release_parts,
    signed_image,
    unsigned_image,
)
from .errors import ConfigError
from .kernels import Toolchain, load_matrix

__all__ = ["DEFAULT_SUITES", "Served", "WriteReport", "discover", "kernels_in", "newest_served", "render_yaml",
           "write_matrix", "served_toolchain", "write_toolchain_pins"]

_DEB_TO_UNAME = {a.debian: a.uname for a in ARCHES.values()}
_WORKERS = 8


@dataclass(frozen=True, order=True)
class Served:
    suite: str
    arch: str
    release: str
    version: str
    image: str | None = None  # set only when the default linux-image-<release>-unsigned is not served
    # Pool paths (under the mirror) the index names for this kernel: every header package, and the
    # image packages to try in order; what `newest_served` asks the pool for.
    headers_files: tuple[str, ...] = field(default=(), compare=False)
    image_files: tuple[tuple[str, str], ...] = field(default=(), compare=False)  # (package, pool path)


def _common_dependency(paragraph: Packages) -> str | None:
    """The -common package a real kernel's headers depend on; None for metapackages and others."""
    parts = release_parts(paragraph["Package"].removeprefix("linux-headers-"))
    if parts is None or not PATCH_LEVEL.fullmatch(parts[0]):
        return None
    common = common_headers(parts[0])  # -common-rt for the rt flavour
    depends = (alt["name"] for group in paragraph.relations["depends"] or () for alt in group)
    return next((d for d in depends if d.startswith(common)), None)


def kernels_in(index: bytes, suite: str, deb_arch: str, flavour: str = "cloud") -> list[Served]:
    """The newest version of every real kernel release of one flavour in one Packages index."""
    want = flavour_name(flavour, deb_arch)
    best: dict[str, tuple[Version, str]] = {}  # release -> (version, its -common package)
    images: set[str] = set()
    files: dict[tuple[str, str], str] = {}  # (package, version) -> pool path
    for paragraph in packages_paragraphs(index, ("linux-headers-", "linux-image-")):
        name = paragraph["Package"]
        files[(name, paragraph["Version"])] = paragraph.get("Filename", "")
        if name.startswith("linux-image-"):
            images.add(name)
            continue
        common = _common_dependency(paragraph)
        release = name.removeprefix("linux-headers-")
        if common is None or release_parts(release)[1] != want:  # type: ignore[index]
            continue
        version = Version(paragraph["Version"])
        if release not in best or version > best[release][0]:
            best[release] = (version, common)
    served = []
    for release, (version, common) in best.items():
        image = None
        if unsigned_image(release) not in images and signed_image(release) in images:
            image = signed_image(release)
        headers = tuple(files.get((name, str(version)), "") for name in (f"linux-headers-{release}", common))
        tried = [image] if image else [unsigned_image(release), signed_image(release)]
        image_files = tuple((name, files[(name, str(version))]) for name in tried if files.get((name, str(version))))
        served.append(Served(suite, _DEB_TO_UNAME[deb_arch], release, str(version), image,
                             tuple(f for f in headers if f), image_files))
    return sorted(served)


def discover(suites: Iterable[str], arches: Iterable[str], flavour: str = "cloud", mirrors: Mirrors | None = None,
             keyrings: tuple[Path, ...] | None = None) -> list[Served]:
    """Every real kernel (suite, arch, release, newest version) the archive serves, suites fetched concurrently."""
    mirrors = mirrors or host_mirrors()
    keyrings = ARCHIVE.keyrings() if keyrings is None else keyrings
    suites, deb_arches = list(dict.fromkeys(suites)), [ARCHES[a].debian for a in dict.fromkeys(arches)]
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(suites) * len(deb_arches)) or 1) as pool:
        releases = list(pool.map(lambda s: verified_release(mirrors.for_suite(s), s, keyrings), suites))
        jobs = [(release, a) for release in releases for a in deb_arches]
        found = pool.map(lambda job: kernels_in(packages_index(job[0], job[1]), job[0].suite, job[1], flavour), jobs)
        return sorted(s for batch in found for s in batch)


def _pool_check(s: Served, mirrors: Mirrors) -> tuple[Served | None, list[str]]:
    """The kernel as it can be fetched (its image switched to the signed one when only that is in
    the pool), or None with the pool paths that are not served."""
    mirror = mirrors.for_suite(s.suite)
    urls = {f"{mirror}/{path}": path for path in (*s.headers_files, *(path for _, path in s.image_files))}
    served = pool_served(list(urls))
    gone = [urls[u] for u in urls if not served[u] and urls[u] in s.headers_files]
    if gone:
        return None, gone
    image = next((name for name, path in s.image_files if served[f"{mirror}/{path}"]), None)
    if s.image_files and image is None:
        return None, [path for _, path in s.image_files]
    default = image is None or image == unsigned_image(s.release)
    return replace(s, image=None if default else image), []


def newest_served(served: Iterable[Served], mirrors: Mirrors | None = None) -> tuple[list[Served], list[str]]:
    """The newest kernel of each (suite, arch) whose header packages, and image package or its
    signed fallback, the pool actually serves (an index can name files whose pool URL 404s);
    with one line for each newer kernel passed over. Pool files are asked with HTTP HEAD."""
    mirrors = mirrors or host_mirrors()
    groups: dict[tuple[str, str], list[Served]] = {}
    for s in served:
        groups.setdefault((s.suite, s.arch), []).append(s)

    def first_served(candidates: list[Served]) -> tuple[Served | None, list[str]]:
        notes: list[str] = []
        for s in sorted(candidates, key=lambda s: (Version(s.version), s.release), reverse=True):
            usable, gone = _pool_check(s, mirrors)
            if usable is not None:
                return usable, notes
            notes.append(f"{s.suite}/{s.arch}: passed over {s.release} {s.version}: the pool does not serve "
                         f"{', '.join(path.rsplit('/', 1)[-1] for path in gone)}")
        return None, notes + [f"{candidates[0].suite}/{candidates[0].arch}: no kernel whose packages the pool serves"]

    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(groups)) or 1) as pool:
        results = list(pool.map(first_served, groups.values()))
    return sorted(s for s, _ in results if s is not None), [note for _, notes in results for note in notes]


def _item_lines(s: Served, dash: str, indent: str) -> list[str]:
    lines = [f"{dash}release: {s.release}", f"{indent}arch: {s.arch}", f"{indent}suite: {s.suite}",
             f"{indent}version: {s.version}"]
    if s.image:
        lines.append(f"{indent}image: {s.image}   # the -unsigned image package is not served")
    return lines


def _grouped(served: list[Served], dash: str, indent: str) -> list[str]:
    lines: list[str] = []
    current = None
    for s in served:
        if (s.suite, s.arch) != current:
            current = (s.suite, s.arch)
            lines.append(f"{dash[:len(dash) - len(dash.lstrip(' '))]}# {s.suite} / {s.arch}")
        lines += _item_lines(s, dash, indent)
    return lines


def render_yaml(served: list[Served]) -> str:
    return "\n".join(["kernels:", *_grouped(served, "  - ", "    ")]) + "\n"


@dataclass
class WriteReport:
    added: list[Served] = field(default_factory=list)
    updated: list[tuple[Served, str]] = field(default_factory=list)  # (now served, version in the file before)
    vanished: list[str] = field(default_factory=list)  # "release (arch) in suite, version"
    pruned: list[str] = field(default_factory=list)
    kept_for_core: list[str] = field(default_factory=list)


def write_matrix(path: Path, served: list[Served], candidates: list[Served], suites: Iterable[str],
                 arches: Iterable[str], flavour: str = "cloud", prune: bool = False) -> WriteReport:
    """Refresh kernels.yaml in place by editing its text, so comments and other keys stay as they are.

    `served` is everything the crawl saw (it decides what vanished and which versions move on);
    `candidates` are the kernels to add when the file lacks them (all of `served`, or the newest).
    Only kernels of the crawled suites, arches and flavour can be reported vanished. The result is
    checked with load_matrix before it replaces the file.
    """
    matrix = load_matrix(path)
    text = path.read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    seq = next(v for k, v in root.value if k.value == "kernels")
    if seq.flow_style:
        raise ConfigError(str(path), seq.start_mark.line + 1, "kernels",
                          "--write needs a block list (one `- release:` item per kernel)")
    items = [{k.value: v for k, v in item.value} for item in seq.value]
    scope_suites, scope_arches = set(suites), set(arches)
    by_key = {(s.suite, s.arch, s.release): s for s in served}
    core_releases = {(c.btf_from.release, c.arch) for c in matrix.core}
    report = WriteReport()
    lines = text.splitlines(keepends=True)
    deletions: list[tuple[int, int]] = []

    for kernel, item, node in zip(matrix.kernels, items, seq.value, strict=True):
        if kernel.suite not in scope_suites or kernel.arch not in scope_arches or \
                kernel.distro != DEBIAN.name or kernel.flavour != flavour_name(flavour, kernel.deb_arch):
            continue
        now = by_key.get((kernel.suite, kernel.arch, kernel.release))
        if now is not None:
            if now.version != kernel.version:
                value = item["version"]
                quote = value.style if value.style in ("'", '"') else ""
                row = lines[value.start_mark.line]
                lines[value.start_mark.line] = (row[:value.start_mark.column] + f"{quote}{now.version}{quote}"
                                                + row[value.end_mark.column:])
                report.updated.append((now, kernel.version))
            continue
        label = f"{kernel.release} ({kernel.arch}) in {kernel.suite}, {kernel.version}"
        report.vanished.append(label)
        if prune and (kernel.release, kernel.arch) in core_releases:
            report.kept_for_core.append(label)
        elif prune:
            deletions.append((node.start_mark.line, _last_line(node)))
            report.pruned.append(label)

    present = {(k.release, k.arch) for k in matrix.kernels}
    chosen: dict[tuple[str, str], Served] = {}
    for s in candidates:
        key = (s.release, s.arch)
        if key not in present and (key not in chosen or Version(s.version) > Version(chosen[key].version)):
            chosen[key] = s
    report.added = sorted(chosen.values())

    first = seq.value[0].start_mark
    dash = lines[first.line][:first.column]
    if not re.fullmatch(r" *- +", dash):
        dash = " " * max(len(dash) - len(dash.lstrip(" ")), 2) + "- "
    end = _last_line(seq.value[-1]) + 1
    if lines[end - 1] and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    addition = [line + "\n" for line in _grouped(report.added, dash, " " * len(dash))]
    lines[end:end] = addition
    for start, stop in sorted(deletions, reverse=True):
        del lines[start:stop + 1]
    if report.added or report.updated or report.pruned:
        _replace_checked(path, "".join(lines))
    return report


def _last_line(node: yaml.Node) -> int:
    """0-based index of the last line holding part of a node (a block collection's own end mark
    lies at the next token, possibly lines further down, so its children decide)."""
    if isinstance(node, yaml.ScalarNode) or node.flow_style or not node.value:
        end = node.end_mark
        return max(node.start_mark.line, end.line if end.column > 0 else end.line - 1)
    children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
    return max(_last_line(child) for child in children)


def _replace_checked(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        shutil.copymode(path, tmp)
        try:
            load_matrix(tmp)
        except ConfigError as exc:
            raise ConfigError(str(path), exc.line, exc.key, f"the refreshed matrix would not parse, left as it was: "
                                                            f"{str(exc).split(': ', 2)[-1]}") from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def served_toolchain(tc: Toolchain, deb_arch: str, mirrors: Mirrors | None = None,
                     keyrings: tuple[Path, ...] | None = None) -> dict[str, str]:
    """package -> the newest version the toolchain's suite serves for deb_arch, for every pinned
    package (absent when the suite serves it no more)."""
    mirrors = mirrors or host_mirrors()
    keyrings = ARCHIVE.keyrings() if keyrings is None else keyrings
    release = verified_release(mirrors.for_suite(tc.suite), tc.suite, keyrings)
    names = {name for name, _ in tc.packages}
    served: dict[str, str] = {}
    for paragraph in packages_paragraphs(packages_index(release, deb_arch), tuple(sorted(names))):
        name, version = paragraph["Package"], paragraph["Version"]
        if name in names and (name not in served or Version(version) > Version(served[name])):
            served[name] = version
    return served


def write_toolchain_pins(path: Path, served: dict[str, str]) -> list[tuple[str, str, str]]:
    """Set each `toolchain.packages` pin of the kernels.yaml at `path` to the served version by
    editing its text (comments stay); (package, old, new) of each change. A package the suite no
    longer serves is an error: its pin cannot be refreshed, only removed by hand."""
    text = path.read_text(encoding="utf-8")
    root = yaml.compose(text)
    toolchain = next(v for k, v in root.value if k.value == "toolchain")
    packages = next(v for k, v in toolchain.value if k.value == "packages")
    lines = text.splitlines(keepends=True)
    changes = []
    for key, value in packages.value:
        new = served.get(key.value)
        if new is None:
            raise ConfigError(str(path), key.start_mark.line + 1, f"toolchain.packages.{key.value}",
                              "no longer served by the toolchain suite: remove or replace it by hand")
        if new == value.value:
            continue
        line = lines[value.start_mark.line]
        start, end = value.start_mark.column, value.end_mark.column
        lines[value.start_mark.line] = f'{line[:start]}"{new}"{line[end:]}'
        changes.append((key.value, value.value, new))
    if changes:
        _replace_checked(path, "".join(lines))
    return changes
