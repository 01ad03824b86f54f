"""The pinned toolchain image, built here without a registry.

debootstrap makes a minimal Debian root, `docker import` turns it into a base image, and a
Dockerfile rendered from templates/ adds clang and llvm. The image is tagged by a hash of its
recipe (suite, clang version, Dockerfile and the in-container compile script), so it is rebuilt
only when that recipe changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from .apt import host_mirrors
from .errors import ToolchainError
from .kernels import Toolchain

__all__ = ["ToolchainImage", "recipe_hash", "ensure_image", "docker_client"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_COMPILE_SCRIPT = "compile_unit.sh"
log = logging.getLogger("hidsbuild")


@dataclass(frozen=True)
class ToolchainImage:
    tag: str
    recipe: str  # hash of the recipe: the toolchain's identity in cache keys
    clang_version: str


def _base_tag(tc: Toolchain) -> str:
    return f"hids-base:{tc.suite}"


def _render_dockerfile(tc: Toolchain) -> str:
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True)
    return env.get_template("Dockerfile.j2").render(base_image=_base_tag(tc), clang=tc.clang)


def recipe_hash(tc: Toolchain) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"suite": tc.suite, "clang": tc.clang}, sort_keys=True).encode())
    h.update(_render_dockerfile(tc).encode())
    h.update((TEMPLATES / _COMPILE_SCRIPT).read_bytes())
    return h.hexdigest()[:16]


def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ToolchainError(f"docker engine unreachable ({exc}); start dockerd (see README)") from None
    return client


def _ensure_base(client: docker.DockerClient, tc: Toolchain) -> None:
    try:
        client.images.get(_base_tag(tc))
        return
    except docker.errors.ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise ToolchainError("debootstrap is missing: apt-get install debootstrap")
    mirror = host_mirrors().debian
    log.info("debootstrap %s (minbase) from %s", tc.suite, mirror)
    with tempfile.TemporaryDirectory(prefix="hids-debootstrap-") as tmp:
        root = Path(tmp) / "root"
        proc = subprocess.run(["debootstrap", "--variant=minbase", tc.suite, str(root), mirror],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-5:])
            raise ToolchainError(f"debootstrap {tc.suite} failed:\n{tail}")
        tarball = Path(tmp) / "root.tar"
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tarball), "."], check=True)
        repo, tag = _base_tag(tc).split(":")
        client.api.import_image_from_file(str(tarball), repository=repo, tag=tag)


def _clang_version(client: docker.DockerClient, tag: str) -> str:
    out = client.containers.run(tag, ["clang", "--version"], remove=True).decode()
    return out.splitlines()[0].strip()


def ensure_image(client: docker.DockerClient, tc: Toolchain, state_dir: Path) -> ToolchainImage:
    """Return the toolchain image for this recipe, building it (and its base) if absent."""
    recipe = recipe_hash(tc)
    tag = f"hids-toolchain:{recipe}"
    meta = state_dir / f"toolchain-{recipe}.json"
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        _ensure_base(client, tc)
        log.info("building toolchain image %s (clang-%s)", tag, tc.clang)
        with tempfile.TemporaryDirectory(prefix="hids-toolchain-") as ctx:
            (Path(ctx) / "Dockerfile").write_text(_render_dockerfile(tc))
            shutil.copy(TEMPLATES / _COMPILE_SCRIPT, Path(ctx) / _COMPILE_SCRIPT)
            try:
                client.images.build(path=ctx, tag=tag, rm=True, forcerm=True)
            except docker.errors.BuildError as exc:
                tail = "".join(str(c.get("stream", c.get("error", ""))) for c in exc.build_log)[-2000:]
                raise ToolchainError(f"toolchain image build failed: {exc.msg}\n{tail}") from None
        meta.unlink(missing_ok=True)
    if meta.is_file():
        clang = json.loads(meta.read_text())["clang"]
    else:
        clang = _clang_version(client, tag)
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps({"clang": clang, "tag": tag}))
        tmp.replace(meta)
    return ToolchainImage(tag, recipe, clang)
