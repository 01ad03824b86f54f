"""The wheel's manifest (docs/DESIGN.md, "Wheel") and where the data directory lives.

Installed from the wheel, data sits in the package as `hids_bytecode/data`; the environment
variable HIDS_BYTECODE_DATA may point elsewhere (tests, unpacked bundles). Every command reads the
manifest here, and here its signature is checked against the trust store (signature.py) on the
very bytes that are then parsed, before any object is read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import IntegrityError, ManifestError
from .records import Record
from .safefs import Unsafe, open_beneath, read_fd, relative_path_problem
from .signature import SIGNATURE_NAME, Verdict, check_signature
from .trust import DEFAULT_POLICY, TrustPolicy

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

    from .recipe import Step

__all__ = ["Entry", "Manifest", "data_dir", "load_manifest", "read_provenance", "DATA_ENV"]

DATA_ENV = "HIDS_BYTECODE_DATA"
_ENTRY_KEYS = ("unit", "program", "kind", "kernel", "variant", "object", "sha256", "programs", "maps")


class Entry(Record):
    # Parsed JSON: load_manifest checks which keys are present, not their values' types; the typed
    # locals below only tell mypy (a value of another type passes through as it always did).
    __slots__ = ("raw", "data")

    def __init__(self, raw: dict[str, Any], data: Path) -> None:
        self.raw: Final = raw
        self.data: Final = data

    @property
    def unit(self) -> str:
        unit: str = self.raw["unit"]
        return unit

    @property
    def program(self) -> str:
        program: str = self.raw["program"]
        return program

    @property
    def kind(self) -> str:
        kind: str = self.raw["kind"]
        return kind

    @property
    def arch(self) -> str:
        arch: str = self.raw["kernel"]["arch"]
        return arch

    @property
    def release(self) -> str | None:
        release: str | None = self.raw["kernel"].get("release")
        return release

    @property
    def wrapper(self) -> bool:
        return bool(self.raw["variant"]["syscall_wrapper"])

    @property
    def debug(self) -> bool:
        return bool(self.raw["variant"]["debug"])

    @property
    def sha256(self) -> str:
        sha256: str = self.raw["sha256"]
        return sha256

    @property
    def object_path(self) -> Path:
        rel: str = self.raw["object"]
        return self.data / rel

    @property
    def source_path(self) -> Path | None:
        source = self.raw.get("source")
        return self.data / source["path"] if source else None

    @property
    def recipe(self) -> tuple[Step, ...] | None:
        """The unit's compile recipe, checked (recipe.py); None for a build that carries none."""
        raw = self.raw.get("recipe")
        if raw is None:
            return None
        from .recipe import RecipeError, parse_recipe  # only a runtime compile reads a recipe
        try:
            return parse_recipe(raw)
        except RecipeError as exc:
            raise ManifestError(f"{self.unit}: malformed compile recipe: {exc}") from None


class Manifest(Record):
    __slots__ = ("path", "version", "source_hash", "entries", "verdict", "provenance", "skipped")

    def __init__(self, path: Path, version: str, source_hash: str, entries: tuple[Entry, ...],
                 verdict: Verdict | None = None, provenance: dict[str, Any] | None = None,
                 skipped: tuple[dict[str, Any], ...] = ()) -> None:
        self.path: Final = path
        self.version: Final = version
        self.source_hash: Final = source_hash
        self.entries: Final = entries
        self.verdict: Final = verdict  # the signature check it passed
        self.provenance: Final = provenance  # {"path", "sha256"} of the provenance statement
        self.skipped: Final = skipped  # {"unit", "reason"}: variants not built, as unable to run there

    @property
    def programs(self) -> list[str]:
        return sorted({e.program for e in self.entries})


def data_dir() -> Path:
    """HIDS_BYTECODE_DATA if set, else the package's own data directory."""
    override = os.environ.get(DATA_ENV)
    if override:
        return Path(override)
    # The package's directory, as importlib.resources.files would give for an installed wheel,
    # without importing it (it pulls tempfile, shutil, bz2, lzma: a tenth of a cold start).
    return Path(os.path.abspath(__file__)).parent / "data"


def _entry_problem(raw: dict[str, Any]) -> str | None:
    """Paths must stay inside the data dir (relative, normalised); programs and maps, checked
    against the object before it is loaded, must be well-formed lists."""
    paths = [("object", raw["object"])]
    if raw.get("source") is not None:
        source = raw["source"]
        if not isinstance(source, dict) or not isinstance(source.get("sha256"), str):
            return "has a malformed source"
        paths.append(("source path", source.get("path")))
    for what, rel in paths:
        problem = relative_path_problem(rel)
        if problem:
            return f"{what} {rel!r} {problem}"
    programs, maps = raw["programs"], raw["maps"]
    if not isinstance(programs, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("section"), str)
            for p in programs):
        return "has malformed programs (expected [{\"name\", \"section\", ...}])"
    if not isinstance(maps, list) or not all(isinstance(m, str) for m in maps):
        return "has malformed maps (expected a list of names)"
    return None


def _read(root: Path, name: str) -> bytes | None:
    """`root/name` through no symlink, None if absent."""
    try:
        return read_fd(open_beneath(root, name))
    except FileNotFoundError:
        return None
    except Unsafe as exc:
        raise ManifestError(f"refused: {exc}") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {root / name}: {exc.strerror or exc}") from None


def load_manifest(data: Path | None = None, trust: TrustPolicy | None = None) -> Manifest:
    """Check manifest.json's signature under `trust` (default: /etc/hids-bytecode/keys, not
    required), then parse and check it; a refusal is SignatureError or TrustStoreError, any defect
    one ManifestError naming the file."""
    root = data or data_dir()
    path = root / "manifest.json"
    raw = _read(root, "manifest.json")
    if raw is None:
        raise ManifestError(f"no manifest at {path} (set {DATA_ENV} or reinstall hids-bytecode)")
    verdict = check_signature(raw, _read(root, SIGNATURE_NAME), trust or DEFAULT_POLICY, str(path))
    try:
        doc = json.loads(raw.decode())
    except UnicodeDecodeError as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(doc, dict) or doc.get("schema") != 1 or not isinstance(doc.get("objects"), list):
        raise ManifestError(f"{path}: expected an object with schema 1 and an objects list")
    entries = []
    for index, raw in enumerate(doc["objects"]):
        missing = [k for k in _ENTRY_KEYS if not isinstance(raw, dict) or k not in raw]
        if missing:
            raise ManifestError(f"{path}: objects[{index}] lacks {', '.join(missing)}")
        if not isinstance(raw["kernel"], dict) or "arch" not in raw["kernel"] or raw["kind"] not in ("exact", "core"):
            raise ManifestError(f"{path}: objects[{index}] ({raw['unit']}) has a malformed kernel or kind")
        problem = _entry_problem(raw)
        if problem:
            raise ManifestError(f"{path}: objects[{index}] ({raw['unit']}) {problem}")
        entries.append(Entry(raw, root))
    provenance = doc.get("provenance")
    if provenance is not None and (not isinstance(provenance, dict) or not isinstance(provenance.get("sha256"), str)
                                   or relative_path_problem(provenance.get("path"))):
        raise ManifestError(f"{path}: provenance must name a relative path and its sha256")
    skipped = doc.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(s, dict) and isinstance(s.get("unit"), str)
                                                and isinstance(s.get("reason"), str) for s in skipped):
        raise ManifestError(f"{path}: skipped must list objects with a unit and a reason")
    return Manifest(path, str(doc.get("version", "unknown")), str(doc.get("source_hash", "unknown")), tuple(entries),
                    verdict, provenance, tuple(skipped))


def read_provenance(manifest: Manifest) -> dict[str, Any]:
    """The provenance statement the manifest names, checked against the sha256 it gives (which the
    signature covers)."""
    ref = manifest.provenance
    if ref is None:
        raise ManifestError(f"{manifest.path}: names no provenance (a wheel bundled before provenance existed)")
    root = manifest.path.parent
    data = _read(root, ref["path"])
    if data is None:
        raise IntegrityError(f"{root / ref['path']}: missing (the manifest names it)")
    import hashlib
    actual = hashlib.sha256(data).hexdigest()
    if actual != ref["sha256"]:
        raise IntegrityError(f"{root / ref['path']}: sha256 {actual[:16]}... is not the manifest's "
                             f"{ref['sha256'][:16]}...")
    try:
        doc: dict[str, Any] = json.loads(data.decode())  # parsed JSON, as written by the build
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{root / ref['path']}: not JSON ({exc})") from None
    return doc
