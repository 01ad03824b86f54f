"""invoke bundle: the loader package and every built object, one reproducible wheel per arch.

Each wheel holds `hids_bytecode/` from loader/, plus `hids_bytecode/data/` with the manifest
of that arch's units, their objects stored once by content and the stitched sources they were
compiled from (docs/DESIGN.md, "Wheel"), the provenance of those objects, and, given the fleet's
build key, the manifest's signature (docs/SIGNING.md). The same build directories, or the shards
of the same matrix merged, with the same key, always give the same bytes. Wheels of earlier
bundles for the same platform are replaced, so dist/ holds one installable set.
"""

from __future__ import annotations

import ast
import hashlib
import json
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from rich.table import Table

from .builddir import Bundle, join, read_build_dir
from .errors import BundleError
from .provenance import git_state, statement, statement_bytes
from .report import console, step
from .signing import KEY_ENV, SigningKey, load_signing_key
from .templating import render
from .versioning import VERSION, source_hash, wheel_version
from .wheel import inputs_digest, remove_wheel, unchanged, wheel_bytes, write_wheel

__all__ = ["LOADER", "PACKAGE", "bundle_wheels", "platform_tag"]

ROOT = Path(__file__).resolve().parent.parent
LOADER = ROOT / "loader"
PACKAGE = "hids_bytecode"
# No compiled extension, but the objects are arch-specific: see docs/DESIGN.md, "Platform tag".
_MANYLINUX = "manylinux_2_17"
_MANIFEST = f"{PACKAGE}/data/manifest.json"
_PROVENANCE = "provenance.json"  # beside the manifest, which names it with its sha256


def platform_tag(arch: str) -> str:
    return f"py3-none-{_MANYLINUX}_{arch}"


def _project(loader: Path) -> dict[str, Any]:
    """Distribution metadata from the loader's pyproject.toml, the one place it is declared."""
    path = loader / "pyproject.toml"
    try:
        project = tomllib.loads(path.read_text())["project"]
        readme = project["readme"]
        return {"name": project["name"], "summary": project["description"],
                "requires_python": project["requires-python"], "scripts": sorted(project["scripts"].items()),
                "license": project["license"], "urls": sorted(project["urls"].items()),
                "classifiers": project.get("classifiers", []),
                "description": (loader / readme).read_text(),
                "license_files": {name: (loader / name).read_bytes() for name in project["license-files"]}}
    except (OSError, tomllib.TOMLDecodeError, KeyError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: cannot read the distribution metadata ({exc})") from None


def _loader_files(loader: Path) -> dict[str, bytes]:
    """The package's modules, keyed by archive name; data/ is filled from the build instead."""
    package = loader / PACKAGE
    files = {f"{PACKAGE}/{p.relative_to(package).as_posix()}": p.read_bytes()
             for p in package.rglob("*.py")
             if "__pycache__" not in p.parts and p.relative_to(package).parts[0] != "data"}
    if f"{PACKAGE}/__init__.py" not in files:
        raise BundleError(f"{package}: no loader package to bundle")
    init = ast.parse(files[f"{PACKAGE}/__init__.py"])
    declared = next((n.value.value for n in init.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                     and any(getattr(t, "id", None) == "__version__" for t in n.targets)), None)
    if declared != VERSION:
        raise BundleError(
            f"{package / '__init__.py'}: __version__ {declared!r} is not hidsbuild.versioning.VERSION {VERSION!r}"
        )
    return files


def _wheel_files(bundle: Bundle, arch: str, loader_files: dict[str, bytes], project: dict[str, Any],
                 version: str, identity: str, dist_info: str, git: dict[str, Any],
                 key: SigningKey | None) -> dict[str, bytes]:
    entries = bundle.for_arch(arch)
    files = dict(loader_files)
    for entry in entries:
        for rel in (entry["object"], entry["source"]["path"]):
            files[f"{PACKAGE}/data/{rel}"] = bundle.files[rel]
    provenance = statement_bytes(statement(arch, entries, files, bundle.inputs, git, _source_url(project)))
    files[f"{PACKAGE}/data/{_PROVENANCE}"] = provenance
    skipped = [bundle.skipped[u] for u in sorted(bundle.skipped) if bundle.skipped[u]["arch"] == arch]
    manifest = {"schema": 1, "version": version, "source_hash": identity, "arch": arch, "objects": entries,
                "skipped": skipped,
                "provenance": {"path": _PROVENANCE, "sha256": hashlib.sha256(provenance).hexdigest()}}
    files[_MANIFEST] = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    if key is not None:
        files[f"{_MANIFEST}.sig"] = key.sign(files[_MANIFEST])
    for name, text in project["license_files"].items():
        files[f"{dist_info}/licenses/{name}"] = text
    files[f"{dist_info}/METADATA"] = render("METADATA.j2", version=version, **project).encode()
    files[f"{dist_info}/WHEEL"] = render("WHEEL.j2", generator_version=VERSION, tag=platform_tag(arch)).encode()
    files[f"{dist_info}/entry_points.txt"] = render("entry_points.txt.j2", scripts=project["scripts"]).encode()
    return files


def _source_url(project: dict[str, Any]) -> str:
    urls = dict(project["urls"])
    if "Source" not in urls:
        raise BundleError("loader/pyproject.toml: [project.urls] needs Source (the provenance names it)")
    return urls["Source"]


def _signed_by(key: SigningKey | None) -> str:
    if key is None:
        return (f"UNSIGNED: no --sign-key or {KEY_ENV} given; hosts that trust a build key "
                "refuse this wheel")
    return f"signed by {key.fingerprint[:16]}... ({key.path.name})"


def _size_table(name: str, entries: list[dict[str, Any]], wheel_size: int) -> Table:
    """Per program: units, distinct objects, their sizes summed per unit and once each; then the
    wheel (whether the manifests are signed is said once, after every table)."""
    table = Table(title=name)
    for column in ("program", "units", "objects", "raw bytes (per unit)", "stored bytes (deduplicated)"):
        table.add_column(column, justify="left" if column == "program" else "right")
    by_program: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_program[entry["program"]].append(entry)
    for program, rows in sorted(by_program.items()):
        distinct = {e["sha256"]: e["size"] for e in rows}
        table.add_row(program, str(len(rows)), str(len(distinct)), f"{sum(e['size'] for e in rows):,}",
                      f"{sum(distinct.values()):,}")
    raw = sum(e["size"] for e in entries)
    distinct = {e["sha256"]: e["size"] for e in entries}
    table.add_section()
    table.add_row("all", str(len(entries)), str(len(distinct)), f"{raw:,}", f"{sum(distinct.values()):,}")
    table.add_row("[bold]wheel[/]", "", "", "", f"[bold]{wheel_size:,}[/] ({wheel_size / raw:.1%} of raw)")
    return table


def bundle_wheels(sources: list[Path], dist: Path, loader: Path = LOADER, sign_key: Path | None = None) -> list[Path]:
    """Check and join the build directories, then write one wheel per arch into `dist`, each
    manifest signed with the Ed25519 key at `sign_key` if given (else unsigned, and said so).

    Every check runs before the first byte is written; a failure leaves dist/ as it was.
    """
    key = load_signing_key(sign_key) if sign_key is not None else None
    with step(f"check {len(sources)} build dir(s)"):
        bundle = join([read_build_dir(s) for s in sources])
    project = _project(loader)
    loader_files = _loader_files(loader)
    git = git_state(ROOT)
    identity = source_hash(bundle.entries.values(), loader_files,
                           {"inputs": bundle.inputs, "git": git, "signer": key.fingerprint if key else None})
    version = wheel_version(identity)
    dist_name = canonicalize_name(project["name"]).replace("-", "_")
    dist_info = f"{dist_name}-{version}.dist-info"

    # path -> (arch, the wheel's bytes, the digest of its inputs); bytes None: the wheel at the path
    # already is them, checked against its record, and is neither compressed nor written again.
    wheels: dict[Path, tuple[str, bytes | None, str]] = {}
    with step(f"assemble {dist_name} {version} for {', '.join(bundle.arches())}"):
        for arch in bundle.arches():
            files = _wheel_files(bundle, arch, loader_files, project, version, identity, dist_info, git, key)
            path = dist / f"{dist_name}-{version}-{platform_tag(arch)}.whl"
            digest = inputs_digest(files, dist_info)
            wheels[path] = (arch, None if unchanged(path, digest) else wheel_bytes(files, dist_info), digest)

    written: list[Path] = []
    try:
        for path, (_, data, digest) in wheels.items():
            if data is not None:
                write_wheel(path, data, digest)
                written.append(path)
    except BaseException:
        for path in written:
            remove_wheel(path)
        raise
    for path, (arch, data, _) in wheels.items():
        for stale in dist.glob(f"{dist_name}-*-{platform_tag(arch)}.whl"):
            if stale != path:
                remove_wheel(stale)
                console.print(f"  replaced {stale.name}")
        if data is None:
            console.print(f"  {path.name}: unchanged (the bytes these inputs make, as recorded when written)")
        console.print(_size_table(path.name, bundle.for_arch(arch), path.stat().st_size))
    console.print(_signed_by(key), soft_wrap=True)  # one line, whatever the width: scripts grep it
    return list(wheels)
