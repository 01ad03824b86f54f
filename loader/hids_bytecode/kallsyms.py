"""The syscall wrapper, told by the first decisive syscall symbol in /proc/kallsyms.

Since 4.17 (x86) and 4.19 (arm64) syscalls are entered through per-arch wrappers such as
`__x64_sys_openat`; older kernels expose `sys_open` / `SyS_open`. The file has 100k+ lines, so it is
streamed and reading stops at the first decisive name. kptr_restrict zeroes the addresses, but the
names still tell.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import KallsymsUnavailable, KallsymsUndecided
from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["WrapperFact", "detect_syscall_wrapper", "addresses_hidden", "KALLSYMS"]

KALLSYMS = Path("/proc/kallsyms")
_SYSCALLS = r"(?:openat|open|execve)"
# Compiled by the scan: a start with this boot's facts cached (hostcache.py) never scans.
_WRAPPED = rf"^(__(?:x64|ia32|arm64|riscv|s390x|powerpc|arm)_sys_){_SYSCALLS}$"
_PLAIN = rf"^(sys_|SyS_){_SYSCALLS}$"


class WrapperFact(Record):
    __slots__ = ("wrapper", "prefix", "symbol", "line", "addresses_hidden")

    def __init__(self, wrapper: bool, prefix: str, symbol: str, line: int, addresses_hidden: bool) -> None:
        self.wrapper: Final = wrapper
        self.prefix: Final = prefix  # "__x64_sys_", "sys_", ...
        self.symbol: Final = symbol  # the decisive symbol
        self.line: Final = line  # its line number, so --explain shows how far the scan went
        self.addresses_hidden: Final = addresses_hidden


def detect_syscall_wrapper(path: Path = KALLSYMS) -> WrapperFact:
    """Scan kallsyms until a wrapped or plain open/execve syscall symbol decides."""
    wrapped, plain = re.compile(_WRAPPED), re.compile(_PLAIN)
    hidden = True
    try:
        with path.open("r", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if hidden and not line.startswith("0000000000000000 "):
                    hidden = False
                if "ys_" not in line and "yS_" not in line:  # cheap pre-filter for sys_ and SyS_
                    continue
                fields = line.split()
                if len(fields) < 3:
                    continue
                name = fields[2]
                match = wrapped.match(name)
                if match:
                    return WrapperFact(True, match.group(1), name, number, hidden)
                match = plain.match(name)
                if match:
                    return WrapperFact(False, match.group(1), name, number, hidden)
    except OSError as exc:
        raise KallsymsUnavailable(f"cannot read {path}: {exc.strerror or exc} (run as root)") from None
    raise KallsymsUndecided(
        f"{path} names no open/openat/execve syscall symbol; cannot tell the syscall wrapper"
        " (empty when not root or a restricted /proc)"
    )


def addresses_hidden(path: Path = KALLSYMS) -> bool:
    """Whether this reader sees zeroed addresses (kptr_restrict, a sysctl: read each time, never cached)."""
    try:
        with path.open("r", errors="replace") as lines:
            return lines.readline().startswith("0000000000000000 ")
    except OSError:
        return True
