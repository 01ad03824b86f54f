"""The pinned toolchain image, built here without a registry.

debootstrap makes a minimal Debian root, `docker import` turns it into a base image, and a
Dockerfile rendered from templates/ adds clang and llvm. The image is tagged by its toolchain id,
a hash of what makes it (suite, clang version, the exact Debian versions of the packages that
shape objects, Dockerfile and the in-container compile script), so it is rebuilt only when that id changes,
and it is checked to hold exactly those versions before it is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hids_bytecode.arches import ARCHES

from . import containers
from .artifacts import read_checked, write_checked
from .distros.debian import host_mirrors
from .errors import ToolchainError
from .kernels import Toolchain
from .owners import make_scratch
from .report import console
from .templating import TEMPLATES, render

if TYPE_CHECKING:  # imported where used: the SDK costs ~0.2 s, which a build of cached units never needs
    import docker

__all__ = ["ToolchainImage", "toolchain_id", "ensure_image", "docker_client"]

_COMPILE_SCRIPT = "compile_unit.sh"
log = logging.getLogger("hidsbuild")
# The image is built for, and runs on, the build host's own architecture.
_HOST_DEB_ARCH = ARCHES[platform.machine()].debian


@dataclass(frozen=True)
class ToolchainImage:
    tag: str
    toolchain_id: str  # hash of what makes the image, exact package pins included: its part of every cache key
    clang_version: str
    packages: dict[str, str]  # name -> version, as dpkg-query read them back from the image


def _base_tag(tc: Toolchain) -> str:
    return f"hids-base:{tc.suite}"


def _render_dockerfile(tc: Toolchain) -> str:
    return render("Dockerfile.j2", base_image=_base_tag(tc), clang=tc.clang,
                  packages=[f"{name}={version}" for name, version in tc.packages])


def toolchain_id(tc: Toolchain) -> str:
    """The toolchain's identity: suite, clang major, the exact package versions pinned (which the
    image is checked to hold) and the files the image is built from."""
    h = hashlib.sha256()
    h.update(json.dumps({"suite": tc.suite, "clang": tc.clang, "packages": tc.packages}, sort_keys=True).encode())
    h.update(_render_dockerfile(tc).encode())
    h.update((TEMPLATES / _COMPILE_SCRIPT).read_bytes())
    return h.hexdigest()[:16]


def docker_client() -> docker.DockerClient:
    """A client of the local engine that answered a ping. The SDK is imported here, not with this
    module: a build whose units are all cached never needs it (~0.2 s of imports)."""
    import docker
    import docker.errors

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as exc:
        raise ToolchainError(f"docker engine unreachable ({exc}); start dockerd (see README)") from None
    return client


def _ensure_base(client: docker.DockerClient, tc: Toolchain) -> None:
    import docker.errors

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


def _probe_image(client: docker.DockerClient, tc: Toolchain, tag: str, scratch: Path) -> tuple[str, dict[str, str]]:
    """Check that a freshly built image can compile (clang, llc and bpftool answer) and holds
    exactly the pinned packages; clang's version line and the installed versions. The answers
    come back through a mounted directory, not the log."""
    out = make_scratch(scratch, "probe")
    names = " ".join(name for name, _ in tc.packages)
    try:
        status = containers.run_to_dir(
            client, tag, "{ clang --version && llc --version && bpftool version; } > /out/versions 2> /out/stderr && "
                         f"dpkg-query -W -f '${{Package}}=${{Version}}\\n' {names} > /out/packages 2>> /out/stderr",
            {}, out)
        versions = (out / "versions").read_text() if (out / "versions").exists() else ""
        if status != 0 or not versions.startswith(("Debian clang", "clang")):
            stderr = (out / "stderr").read_text(errors="replace").strip() if (out / "stderr").exists() else ""
            raise ToolchainError(f"toolchain image {tag} cannot compile (exit {status}): {stderr[-500:]}")
        installed = dict(line.split("=", 1) for line in (out / "packages").read_text().splitlines() if "=" in line)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    wrong = [f"{name} {installed.get(name, 'missing')} (pinned {version})" for name, version in tc.packages
             if installed.get(name) != version]
    if wrong:
        raise ToolchainError(f"toolchain image {tag} does not hold the pinned packages: {', '.join(wrong)}")
    return versions.splitlines()[0].strip(), installed


def check_pins_served(tc: Toolchain) -> None:
    """Before an image is built: every pinned version must still be served by the toolchain suite.
    Debian replaces a package in a suite at each point release, and an image built then would
    hold another compiler under the same pins: the build stops and names the drift instead."""
    from .discover import served_toolchain  # the archive's signed index, read only when an image is built

    served = served_toolchain(tc, _HOST_DEB_ARCH)
    drift = [f"{name} pinned {version}, {tc.suite} serves {served.get(name, 'no version')}"
             for name, version in tc.packages if served.get(name) != version]
    if drift:
        raise ToolchainError("the toolchain pins are no longer served: " + "; ".join(drift)
                             + ". Refresh them with `invoke kernels.discover --toolchain --write kernels.yaml` "
                               "(objects will then be rebuilt with the new compiler)")


def _build_image(client: docker.DockerClient, tc: Toolchain, tag: str, from_scratch: bool) -> None:
    import docker.errors

    check_pins_served(tc)
    _ensure_base(client, tc)
    log.info("building toolchain image %s (clang-%s)", tag, tc.clang)
    with tempfile.TemporaryDirectory(prefix="hids-toolchain-") as ctx:
        (Path(ctx) / "Dockerfile").write_text(_render_dockerfile(tc))
        shutil.copy(TEMPLATES / _COMPILE_SCRIPT, Path(ctx) / _COMPILE_SCRIPT)
        try:
            client.images.build(path=ctx, tag=tag, rm=True, forcerm=True, nocache=from_scratch)
        except docker.errors.BuildError as exc:
            tail = "".join(str(c.get("stream", c.get("error", ""))) for c in exc.build_log)[-2000:]
            raise ToolchainError(f"toolchain image build failed: {exc.msg}\n{tail}") from None


def ensure_image(client: docker.DockerClient, tc: Toolchain, cache_dir: Path, rebuild: bool = False) -> ToolchainImage:
    """Return the toolchain image of this toolchain id, building it (and its base) if absent, or anew
    without docker's layer cache when `rebuild` is set.

    An image is recorded (id, clang version, installed packages) only after a probe shows it
    compiles and holds exactly the pinned packages, and the record is checked against the tag's
    image id on every use: an image replaced under the same tag is rebuilt, not trusted.
    """
    import docker.errors

    if not tc.packages:
        raise ToolchainError("kernels.yaml's toolchain has no `packages:` pins; add them with "
                             "`invoke kernels.discover --toolchain --write kernels.yaml`")
    state_dir = cache_dir / "state"
    tc_id = toolchain_id(tc)
    tag = f"hids-toolchain:{tc_id}"
    meta_path = state_dir / f"toolchain-{tc_id}.json"
    meta = read_checked(meta_path, f"toolchain record {tc_id}")
    try:
        image_id = client.images.get(tag).id
    except docker.errors.ImageNotFound:
        image_id = None
    recorded = json.loads(meta) if meta else None
    if image_id is not None and recorded is not None and recorded.get("image_id") != image_id:
        console.print(f"[yellow]toolchain image {tag} is not the one this cache recorded; rebuilding it[/]")
        image_id = None
    if image_id is None or rebuild:
        _build_image(client, tc, tag, from_scratch=rebuild)
        image_id = client.images.get(tag).id
        recorded = None
    if recorded is None or "packages" not in recorded:
        clang, installed = _probe_image(client, tc, tag, state_dir / "tmp")
        recorded = {"clang": clang, "tag": tag, "image_id": image_id, "packages": installed}
        write_checked(meta_path, json.dumps(recorded, sort_keys=True).encode())
    return ToolchainImage(tag, tc_id, recorded["clang"], recorded["packages"])
