"""Errors of the build side, each with its own process exit code."""

from __future__ import annotations

__all__ = [
    "BuildError",
    "ConfigError",
    "PackageUnavailable",
    "ToolchainError",
    "UnitsFailed",
    "BundleError",
    "VerifyFailed",
]


class BuildError(Exception):
    """Base class: an expected failure reported as one line, never a traceback."""

    exit_code = 1


class ConfigError(BuildError):
    """kernels.yaml is malformed; raised before any work starts."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, key: str, message: str) -> None:
        self.path, self.line, self.key = path, line, key
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {message}")


class PackageUnavailable(BuildError):
    """A kernel package (headers or the image verify boots) cannot be had, or is not what its index says."""

    exit_code = 3


class ToolchainError(BuildError):
    """The toolchain image could not be built or the docker engine is unreachable."""

    exit_code = 4


class UnitsFailed(BuildError):
    """Some units failed to compile or validate; the others were built."""

    exit_code = 5


class BundleError(BuildError):
    """A build or shard directory cannot be turned into a wheel."""

    exit_code = 6


class VerifyFailed(BuildError):
    """An object failed to load, attach or report an event in its kernel's VM."""

    exit_code = 7
