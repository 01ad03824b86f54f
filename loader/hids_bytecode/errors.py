"""One exception class per expected failure, each with its own process exit code.

The CLI prints `hids-bytecode: <message>` and exits with `exit_code`; no traceback is ever shown
for these. Codes are stable so agents and scripts can branch on them.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs a cold start
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .selection import Step  # selection imports this module

__all__ = [
    "HidsError", "ManifestError", "UnknownArch", "UnknownRelease", "KallsymsUnavailable",
    "KallsymsUndecided", "BtfUnavailable", "NoMatch", "IntegrityError", "LibbpfMissing",
    "LoadError", "AttachError", "RuntimeCompileError", "MountError", "NotLoaded", "BpftoolError",
    "NotPermitted", "AlreadyLoaded", "PinTreeError", "InvalidArgument", "Busy", "Interrupted",
    "HostFactError", "SignatureError", "TrustStoreError", "RingCorrupt", "EXIT_CODES",
]


class HidsError(Exception):
    """Base of every expected failure; `str(exc)` is the one-line reason."""

    exit_code = 1

    def __init__(self, message: str, steps: Iterable[Step] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.steps = tuple(steps)  # selection steps, when the failure is a refusal to choose

    def __str__(self) -> str:
        return self.message


class ManifestError(HidsError):
    exit_code = 10


class UnknownArch(HidsError):
    exit_code = 11


class UnknownRelease(HidsError):
    exit_code = 12


class KallsymsUnavailable(HidsError):
    exit_code = 13


class KallsymsUndecided(HidsError):
    exit_code = 14


class BtfUnavailable(HidsError):
    exit_code = 15


class NoMatch(HidsError):
    exit_code = 16


class IntegrityError(HidsError):
    exit_code = 17


class LibbpfMissing(HidsError):
    exit_code = 18


class LoadError(HidsError):
    """`log` holds everything libbpf printed during the failed step (the verifier's whole log for a
    rejected program), so a caller never has to load again to see it."""

    exit_code = 19

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class AttachError(HidsError):
    exit_code = 20


class RuntimeCompileError(HidsError):
    exit_code = 21


class MountError(HidsError):
    exit_code = 22


class NotLoaded(HidsError):
    exit_code = 23


class BpftoolError(HidsError):
    exit_code = 24


class NotPermitted(HidsError):
    exit_code = 25


class AlreadyLoaded(HidsError):
    exit_code = 26


class PinTreeError(HidsError):
    """The pin tree is not root-owned 0700 bpffs, or holds something the loader did not put there."""

    exit_code = 27


class InvalidArgument(HidsError):
    """A program name outside the fixed pattern, or an agent pid that does not exist."""

    exit_code = 28


class Busy(HidsError):
    """Another process holds the pin tree's lock or already reads the program's ring."""

    exit_code = 29


class Interrupted(HidsError):
    """SIGINT or SIGTERM; the exit code is the shell's 128 + signal number (130, 143)."""

    exit_code = 130

    def __init__(self, signum: int) -> None:
        import signal  # its enums cost every start; only an interrupt needs a signal's name
        super().__init__(f"interrupted by {signal.Signals(signum).name}; nothing half-done was left")
        self.exit_code = 128 + signum


class HostFactError(HidsError):
    """A host file the facts come from (/etc/os-release, /proc/...) is not readable text."""

    exit_code = 30


class SignatureError(HidsError):
    """The manifest carries no valid signature from a trusted key (or none is configured and one is
    required): the wheel is refused before any object is read."""

    exit_code = 31


class TrustStoreError(HidsError):
    """The trusted-keys directory or a key in it is unsafe (writable by others, a symlink, not
    root's) or unreadable: refused, never skipped."""

    exit_code = 32


class RingCorrupt(HidsError):
    """A ring buffer record header the kernel cannot have written (it ends past the producer):
    the ring is not read further rather than publishing a consumer position the kernel never gave."""

    exit_code = 33


EXIT_CODES: dict[str, int] = {cls.__name__: cls.exit_code for cls in HidsError.__subclasses__()}
