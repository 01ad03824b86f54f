"""How the build runs toolchain containers: labelled with their owning run, outputs only through a
bind-mounted directory, and killed at once when the run is interrupted.

Nothing a container produces is read from its log stream: docker does not promise to deliver
that stream whole (docker-py #2575, moby #49655), and a cut vmlinux.h once broke every build.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ToolchainError
from .owners import OWNER, owner_alive
from .report import console

if TYPE_CHECKING:  # imported where used: the SDK costs ~0.2 s, which a build of cached units never needs
    import docker

__all__ = ["LABEL", "start", "wait", "run_to_dir", "reap_leftovers", "Interrupted"]

LABEL = "org.hids-bytecode.owner"
_POLL_SECONDS = 0.1


class Interrupted(Exception):
    """The run was asked to stop; its container has been removed."""


def start(client: docker.DockerClient, image: str, command: list[str], volumes: dict[str, dict[str, str]]) -> Any:
    """Start a detached, network-less container labelled with this run."""
    import docker.errors

    name = f"hids-{uuid.uuid4().hex[:16]}"
    try:
        # The caller's uid: what the container writes under /out belongs to whoever runs the build.
        return client.containers.run(image, command, volumes=volumes, network_disabled=True, detach=True,
                                     labels={LABEL: OWNER}, user=f"{os.getuid()}:{os.getgid()}", name=name)
    except BaseException as exc:
        # Ctrl-C between docker's create and start returning leaves a container no handle points
        # to: found again by its name and removed, so that an interrupted run leaves none.
        try:
            client.containers.get(name).remove(force=True)
        except docker.errors.DockerException:
            pass
        if isinstance(exc, docker.errors.DockerException):
            raise ToolchainError(f"cannot start a toolchain container: {exc}") from None
        raise


def wait(container: Any, stop: threading.Event | None = None) -> int:
    """The container's exit status, polling so that `stop` (or Ctrl-C in the main thread) ends it
    promptly; the container is removed in every case."""
    try:
        while True:
            if stop is not None and stop.is_set():
                raise Interrupted()
            container.reload()
            if container.status in ("exited", "dead"):
                return int(container.attrs["State"]["ExitCode"])
            time.sleep(_POLL_SECONDS)
    finally:
        remove(container)


def remove(container: Any) -> None:
    import docker.errors

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.DockerException as exc:
        console.print(f"[yellow]could not remove container {container.short_id}: {exc}[/]")


def run_to_dir(client: docker.DockerClient, image: str, script: str, mounts: dict[Path, str], out: Path) -> int:
    """Run `sh -c script` with `out` mounted read-write at /out and `mounts` read-only; the exit status.
    What the script writes under /out is the only output; its stderr should go to a file there too."""
    volumes = {str(host): {"bind": path, "mode": "ro"} for host, path in mounts.items()}
    volumes[str(out)] = {"bind": "/out", "mode": "rw"}
    return wait(start(client, image, ["sh", "-c", script], volumes))


def reap_leftovers(client: docker.DockerClient) -> int:
    """Remove containers that runs of this host left behind when they died; live runs' are kept."""
    removed = 0
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        if not owner_alive(container.labels.get(LABEL, "")):
            remove(container)
            removed += 1
    if removed:
        console.print(f"removed {removed} container(s) left by build runs that died")
    return removed
