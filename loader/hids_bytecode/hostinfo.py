"""Facts about the running host, each with where it came from (shown by `select --explain`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import HostFactError, UnknownArch
from .kallsyms import KALLSYMS, WrapperFact, detect_syscall_wrapper
from .kversion import KernelVersion, upstream_version

__all__ = ["Fact", "HostFacts", "gather", "SUPPORTED_ARCHES", "BTF_PATH"]

SUPPORTED_ARCHES = ("x86_64", "aarch64")
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
_VERSION_SIGNATURE = Path("/proc/version_signature")
_OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


@dataclass(frozen=True)
class Fact:
    name: str
    value: object
    source: str


@dataclass(frozen=True)
class HostFacts:
    arch: str
    release: str
    uname_version: str
    version: KernelVersion
    wrapper: WrapperFact
    btf: bool
    distro: str
    distro_version: str
    facts: tuple[Fact, ...] = field(default=(), compare=False)

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {f.name: {"value": f.value, "source": f.source} for f in self.facts}


def _text(path: Path) -> str:
    """The file as text; a file that is not UTF-8 means a host we cannot describe: one line."""
    data = path.read_bytes()
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise HostFactError(f"{path} is not valid UTF-8 (byte {exc.start}: {exc.reason}); "
                            f"cannot read the host's facts") from None


def _os_release(paths: tuple[Path, ...]) -> tuple[str, str, str]:
    for path in paths:
        try:
            text = _text(path)
        except OSError:
            continue
        values = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
        return values.get("ID", "unknown"), values.get("VERSION_ID", ""), str(path)
    return "unknown", "", "no os-release file"


def _read_optional(path: Path) -> str | None:
    try:
        return _text(path)
    except OSError:
        return None


def gather(
    uname: os.uname_result | None = None,
    kallsyms: Path = KALLSYMS,
    btf_path: Path = BTF_PATH,
    version_signature: Path = _VERSION_SIGNATURE,
    os_release: tuple[Path, ...] = _OS_RELEASE,
) -> HostFacts:
    """Read every fact; the parameters exist so tests can point at fixture files."""
    u = uname or os.uname()
    if u.machine not in SUPPORTED_ARCHES:
        raise UnknownArch(f"unsupported architecture {u.machine!r} (uname -m); "
                          f"supported: {', '.join(SUPPORTED_ARCHES)}")
    version = upstream_version(u.release, u.version, _read_optional(version_signature))
    wrapper = detect_syscall_wrapper(kallsyms)
    btf = btf_path.is_file()
    distro, distro_version, distro_source = _os_release(os_release)
    facts = (
        Fact("arch", u.machine, "uname -m"),
        Fact("release", u.release, "uname -r"),
        Fact("version", str(version), version.source),
        Fact("syscall_wrapper", wrapper.wrapper,
             f"{kallsyms} line {wrapper.line}: {wrapper.symbol}"
             + (" (addresses hidden by kptr_restrict)" if wrapper.addresses_hidden else "")),
        Fact("btf", btf, str(btf_path) + (" present" if btf else " absent")),
        Fact("distro", f"{distro} {distro_version}".strip(), distro_source),
    )
    return HostFacts(u.machine, u.release, u.version, version, wrapper, btf, distro, distro_version, facts)
