"""Boot-constant host facts, cached per boot so `select` need not scan /proc/kallsyms each time.

Only what cannot change until the next boot is kept: the syscall wrapper told by the core
kernel's symbols (modules loaded later add symbols, never the core's syscall entry points).
Whether addresses are hidden (kptr_restrict, a sysctl), the distro (an upgrade), bpffs mounts,
lockdown and the presence of a --btf file can all change while the kernel runs: never cached.

The cache is trusted like root's other private state (docs/THREAT_MODEL.md): only when running as
root, in a directory reached from / through no symlink and no ancestor others can rewrite,
root-owned with mode 0700, in a regular root-owned file no one else can write, singly linked,
written whole (temporary file + rename) and naming the current boot id, kallsyms path and
kernel. Any doubt is a miss: the facts are computed again, and the reason is kept for --explain.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from .kallsyms import WrapperFact

__all__ = ["RUN_ENV", "RUN_DIR", "FACTS_NAME", "Lookup", "run_dir", "boot_id", "lookup", "store"]

RUN_ENV = "HIDS_BYTECODE_RUN"
RUN_DIR = Path("/run/hids-bytecode")
FACTS_NAME = "facts.json"
_MAX_FACTS = 64 * 1024  # the file holds a few hundred bytes; anything larger is not ours
_FORMAT = 1
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def run_dir() -> Path:
    """/run/hids-bytecode, or HIDS_BYTECODE_RUN (tests): an absolute path, checked the same way."""
    return Path(os.environ.get(RUN_ENV) or RUN_DIR)


def boot_id(path: Path = _BOOT_ID) -> str | None:
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


class Lookup:
    """What the cache said: a fact (hit), or why there was none (`reason`, shown by --explain)."""

    def __init__(self, fact: WrapperFact | None, reason: str, where: Path) -> None:
        self.fact, self.reason, self.where = fact, reason, where


def _open_dir(where: Path, create: bool) -> int:
    """The run dir, after safefs's walk from / and a 0700 root-owned check on the fd itself."""
    from .safefs import Unsafe, open_private_dir
    if not where.is_absolute():
        raise Unsafe(f"{RUN_ENV}={where} is not an absolute path")
    fd = open_private_dir(where, create=create)
    st = os.fstat(fd)
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        os.close(fd)
        raise Unsafe(f"{where} is owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}, "
                     "not root's 0700")
    return fd


def _key(kallsyms: Path, boot: str) -> dict[str, object]:
    u = os.uname()
    return {"format": _FORMAT, "boot_id": boot, "kallsyms": str(kallsyms), "release": u.release,
            "version": u.version, "machine": u.machine}


def lookup(kallsyms: Path) -> Lookup:
    """The cached wrapper fact of this boot, or a miss with its reason; never raises."""
    where = run_dir()
    if os.geteuid() != 0:
        return Lookup(None, "not root: no cache", where)
    boot = boot_id()
    if boot is None:
        return Lookup(None, f"{_BOOT_ID} unreadable", where)
    from .safefs import Unsafe, open_private_file, read_fd
    try:
        dir_fd = _open_dir(where, create=False)
    except FileNotFoundError:
        return Lookup(None, "no cache yet", where)
    except (OSError, Unsafe) as exc:
        return Lookup(None, f"cache refused: {exc}", where)
    try:
        raw = read_fd(open_private_file(dir_fd, FACTS_NAME, str(where / FACTS_NAME)), limit=_MAX_FACTS)
        doc = json.loads(raw)
    except FileNotFoundError:
        return Lookup(None, "no cache yet", where)
    except (OSError, Unsafe, ValueError) as exc:
        return Lookup(None, f"cache refused: {exc}", where)
    finally:
        os.close(dir_fd)
    if not isinstance(doc, dict) or {k: doc.get(k) for k in _key(kallsyms, boot)} != _key(kallsyms, boot):
        return Lookup(None, "cache is of another boot, kernel or format", where)
    w = doc.get("wrapper")
    if not (isinstance(w, dict) and isinstance(w.get("wrapper"), bool) and isinstance(w.get("prefix"), str)
            and isinstance(w.get("symbol"), str) and isinstance(w.get("line"), int)):
        return Lookup(None, "cache is malformed", where)
    return Lookup(WrapperFact(w["wrapper"], w["prefix"], w["symbol"], w["line"], False), "hit", where)


def store(kallsyms: Path, fact: WrapperFact) -> str:
    """Write this boot's fact (root only; a new file renamed into place); what happened, in words."""
    where = run_dir()
    boot = boot_id()
    if os.geteuid() != 0 or boot is None:
        return "not written (not root or no boot id)"
    from .safefs import Unsafe
    if not where.parent.is_dir():  # only the run dir itself is ever created, never /run
        return f"not written: {where.parent} is not a directory"
    try:
        dir_fd = _open_dir(where, create=True)
    except (OSError, Unsafe) as exc:
        return f"not written: {exc}"
    temp = f".{FACTS_NAME}.{os.getpid()}"
    doc = {**_key(kallsyms, boot), "wrapper": {"wrapper": fact.wrapper, "prefix": fact.prefix,
                                                "symbol": fact.symbol, "line": fact.line}}
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            os.write(fd, json.dumps(doc, sort_keys=True).encode())
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        os.rename(temp, FACTS_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return f"written to {where / FACTS_NAME}"
    except OSError as exc:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        return f"not written: {exc.strerror or exc}"
    finally:
        os.close(dir_fd)
