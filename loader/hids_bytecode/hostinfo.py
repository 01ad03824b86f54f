"""Facts about the running host, each with where it came from (shown by `select --explain`)."""

from __future__ import annotations

import os
from pathlib import Path

from .arches import ARCHES
from .errors import HostFactError, UnknownArch
from .kallsyms import KALLSYMS, WrapperFact, addresses_hidden, detect_syscall_wrapper
from .kversion import KernelVersion, upstream_version
from .records import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Fact", "HostFacts", "gather", "what_if", "SUPPORTED_ARCHES", "BTF_PATH"]

SUPPORTED_ARCHES = tuple(ARCHES)
BTF_PATH = Path("/sys/kernel/btf/vmlinux")
_VERSION_SIGNATURE = Path("/proc/version_signature")
_BTF_SINCE = (5, 2)  # /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF)
_OS_RELEASE = (Path("/etc/os-release"), Path("/usr/lib/os-release"))


class Fact(Record):
    __slots__ = ("name", "value", "source")

    def __init__(self, name: str, value: object, source: str) -> None:
        self.name: Final = name
        self.value: Final = value
        self.source: Final = source


class HostFacts(Record):
    __slots__ = ("arch", "release", "uname_version", "version", "wrapper", "btf", "distro", "distro_version", "facts")
    _uncompared = ("facts",)  # where a fact came from (the cache or a scan) does not make another host

    def __init__(self, arch: str, release: str, uname_version: str, version: KernelVersion, wrapper: WrapperFact,
                 btf: bool, distro: str, distro_version: str, facts: tuple[Fact, ...] = ()) -> None:
        self.arch: Final = arch
        self.release: Final = release
        self.uname_version: Final = uname_version
        self.version: Final = version
        self.wrapper: Final = wrapper
        self.btf: Final = btf
        self.distro: Final = distro
        self.distro_version: Final = distro_version
        self.facts: Final = facts

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


def _wrapper(kallsyms: Path, cached: bool) -> tuple[WrapperFact, str]:
    """The syscall wrapper fact, from this boot's cache when `cached` (hostcache.py), and a note
    on the cache for --explain."""
    if not cached:
        return detect_syscall_wrapper(kallsyms), ""
    from . import hostcache
    from .hostcache import FACTS_NAME
    found = hostcache.lookup(kallsyms)
    if found.fact is not None:
        hidden = addresses_hidden(kallsyms)  # a sysctl: read now, never cached
        return found.fact.replace(addresses_hidden=hidden), f"; cached for this boot in {found.where / FACTS_NAME}"
    fact = detect_syscall_wrapper(kallsyms)
    return fact, f"; scanned ({found.reason}), cache {hostcache.store(kallsyms, fact)}"


def gather(
    uname: os.uname_result | None = None,
    kallsyms: Path = KALLSYMS,
    btf_path: Path = BTF_PATH,
    version_signature: Path = _VERSION_SIGNATURE,
    os_release: tuple[Path, ...] = _OS_RELEASE,
    cache: bool = True,
) -> HostFacts:
    """Read every fact; the parameters exist so tests can point at fixture files. The kallsyms
    scan of this running host (default `uname` and `kallsyms`) is cached per boot unless `cache`
    is False."""
    u = uname or os.uname()
    if u.machine not in SUPPORTED_ARCHES:
        raise UnknownArch(f"unsupported architecture {u.machine!r} (uname -m); "
                          f"supported: {', '.join(SUPPORTED_ARCHES)}")
    version = upstream_version(u.release, u.version, _read_optional(version_signature))
    wrapper, cache_note = _wrapper(kallsyms, cache and uname is None and kallsyms == KALLSYMS)
    btf = btf_path.is_file()
    distro, distro_version, distro_source = _os_release(os_release)
    facts = (
        Fact("arch", u.machine, "uname -m"),
        Fact("release", u.release, "uname -r"),
        Fact("version", str(version), version.source),
        Fact("syscall_wrapper", wrapper.wrapper,
             f"{kallsyms} line {wrapper.line}: {wrapper.symbol}"
             + (" (addresses hidden by kptr_restrict)" if wrapper.addresses_hidden else "") + cache_note),
        Fact("btf", btf, str(btf_path) + (" present" if btf else " absent")),
        Fact("distro", f"{distro} {distro_version}".strip(), distro_source),
    )
    return HostFacts(u.machine, u.release, u.version, version, wrapper, btf, distro, distro_version, facts)


def what_if(release: str, arch: str | None = None, version_signature: str | None = None,
            btf_path: Path | None = None) -> HostFacts:
    """The facts of a host running kernel `release` (a pre-upgrade check): what cannot be read
    from a kernel that is not running is derived from its version, and says so."""
    arch = arch or os.uname().machine
    if arch not in SUPPORTED_ARCHES:
        raise UnknownArch(f"unsupported architecture {arch!r} (--arch); supported: {', '.join(SUPPORTED_ARCHES)}")
    version = upstream_version(release, "", version_signature)
    since = ARCHES[arch].wrapper_since
    wrapper = version.tuple[:2] >= since
    symbol = f"{arch} kernels >= {since[0]}.{since[1]} enter syscalls through wrappers ({ARCHES[arch].syscall_prefix}*)"
    if btf_path is not None:
        btf, btf_source = btf_path.is_file(), f"{btf_path} " + ("present" if btf_path.is_file() else "absent")
    else:
        btf = version.tuple[:2] >= _BTF_SINCE
        btf_source = f"assumed: kernels >= {_BTF_SINCE[0]}.{_BTF_SINCE[1]} can expose /sys/kernel/btf/vmlinux"
    facts = (
        Fact("arch", arch, "--arch" if arch != os.uname().machine else "uname -m (--arch to change)"),
        Fact("release", release, "--kernel"),
        Fact("version", str(version), version.source.replace("uname -r", "--kernel")),
        Fact("syscall_wrapper", wrapper, f"derived from the version: {symbol}"),
        Fact("btf", btf, btf_source),
        Fact("distro", "what-if", "--kernel: not this host's"),
    )
    return HostFacts(arch, release, "", version, WrapperFact(wrapper, "", "", 0, False), btf, "what-if", "",
                     facts)
