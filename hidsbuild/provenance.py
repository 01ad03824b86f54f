"""The wheel's provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate.

It names every input of the objects in the wheel (index.json's `inputs`: the matrix file's hash,
the toolchain id and its exact Debian package versions, each header package with the
sha256 apt's signed index gave it, or for a user's header tree its directory and the sha256
of its file-by-file record; each stitched source), each unit's compiler arguments, and the
project's git commit with a dirty flag. Its subjects are every file the package ships besides the
manifest, the signature and itself, so one signature over the manifest (which names this file
and its sha256) covers code, objects, sources and provenance alike. No clock is read: a build
time appears only when SOURCE_DATE_EPOCH says which, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["git_state", "statement", "statement_bytes"]

_GIT_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}


def git_state(root: Path) -> dict[str, Any]:
    """The project's commit and whether the work tree differs from it; nulls outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  env=_GIT_ENV, check=False, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout if proc.returncode == 0 else None

    commit = git("rev-parse", "--verify", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=normal") if commit else None
    return {"commit": commit.strip() if commit else None, "dirty": None if status is None else bool(status.strip())}


def _dependencies(inputs: Mapping[str, Any] | None, git: Mapping[str, Any], repo: str) -> list[dict[str, Any]]:
    deps: list[dict[str, Any]] = [{
        "uri": f"git+{repo}",
        "digest": {"gitCommit": git["commit"]} if git["commit"] else {},
        "annotations": {"dirty": git["dirty"]},
    }]
    if not inputs:
        return deps
    deps.append({"name": inputs["matrix"]["path"], "digest": {"sha256": inputs["matrix"]["sha256"]},
                 "annotations": {"role": "matrix"}})
    tc = inputs["toolchain"]
    deps.append({"name": "toolchain-id", "digest": {"sha256": tc["id"]},
                 "annotations": {"role": "toolchain", "suite": tc["suite"], "clang": tc["clang"]}})
    for name, version in sorted(tc["packages"].items()):
        deps.append({"uri": f"pkg:deb/debian/{name}@{version}?distro={tc['suite']}",
                     "annotations": {"role": "toolchain package"}})
    for h in inputs["headers"]:
        digest = {"sha256": h["sha256"]} if h.get("sha256") else {}
        if h.get("distro", "debian") == "debian":
            deps.append({"uri": f"pkg:deb/debian/{h['name']}@{h['version']}?arch={h['arch']}", "digest": digest,
                         "annotations": {"role": "kernel headers",
                                         **{k: h[k] for k in ("suite", "filename", "size") if k in h}}})
        else:
            # Headers the user supplied (distros.local): no package URL names them; the digest is
            # that of the tree's file-by-file record, taken when the directory was copied in.
            deps.append({"name": f"{h['name']} from {h.get('source', '?')}", "digest": digest,
                         "annotations": {"role": "kernel headers", "distro": h["distro"], "version": h["version"],
                                         "arch": h["arch"]}})
    for program, sha in sorted(inputs["sources"].items()):
        deps.append({"name": f"stitched source of {program}", "digest": {"sha256": sha},
                     "annotations": {"role": "source"}})
    return deps


def _build_time(environ: Mapping[str, str]) -> dict[str, str]:
    try:
        epoch = int(environ["SOURCE_DATE_EPOCH"])
    except (KeyError, ValueError):
        return {}
    return {"startedOn": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))}


def statement(arch: str, entries: list[dict[str, Any]], subjects: Mapping[str, bytes],
              inputs: Mapping[str, Any] | None, git: Mapping[str, Any], repo: str,
              environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The statement for one arch's wheel; `subjects` maps archive names to the bytes shipped and
    `repo` is the project's source repository (pyproject's Source URL)."""
    env = os.environ if environ is None else environ
    units = [{"unit": e["unit"], "object": {"sha256": e["sha256"]}, "source": {"sha256": e["source"]["sha256"]},
              "cflags": list(e.get("cflags", [])), "toolchain": e["toolchain"]} for e in entries]
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}
                    for name, data in sorted(subjects.items())],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": f"{repo}/blob/main/docs/SIGNING.md#build-type-v1",
                "externalParameters": {"arch": arch, "matrix": (inputs or {}).get("matrix"), "units": units},
                "internalParameters": {"toolchain": {k: v for k, v in (inputs or {}).get("toolchain", {}).items()
                                                     if k != "packages"}},
                "resolvedDependencies": _dependencies(inputs, git, repo),
            },
            "runDetails": {
                "builder": {"id": f"{repo}/blob/main/tasks.py#build-all"},
                "metadata": {"invocationId": f"source {git['commit'] or 'unknown'}"
                                             f"{' (dirty)' if git['dirty'] else ''}", **_build_time(env)},
            },
        },
    }


def statement_bytes(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
