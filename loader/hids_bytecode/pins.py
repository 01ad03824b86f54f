"""Where a loaded program's pins live: /sys/fs/bpf/hids/<program>/{maps,progs,links}/<name>.

Removing the link pins detaches the programs once no process holds them; removing the map and
program pins lets the kernel free them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import AlreadyLoaded, NotLoaded
from .mounts import BPFFS

__all__ = ["pin_root", "pin_dir", "free_pin_dir", "unpin", "PIN_ENV"]

PIN_ENV = "HIDS_BYTECODE_PIN_ROOT"


def pin_root() -> Path:
    """bpffs directory holding every program's pins (HIDS_BYTECODE_PIN_ROOT overrides, for tests)."""
    return Path(os.environ.get(PIN_ENV) or BPFFS / "hids")


def pin_dir(program: str) -> Path:
    return pin_root() / program


def free_pin_dir(program: str) -> Path:
    """The program's pin directory, refused when a previous load still holds it."""
    root = pin_dir(program)
    if root.exists():
        raise AlreadyLoaded(f"{program} is already loaded (pins under {root}); "
                            f"run `hids-bytecode unload {program}` first")
    return root


def unpin(program: str) -> list[Path]:
    """Remove every pin of `program`; the removed paths, deepest first."""
    root = pin_dir(program)
    if not root.is_dir():
        raise NotLoaded(f"{program} is not loaded (no pins under {root})")
    removed = []
    for directory, subdirs, files in os.walk(root, topdown=False):
        for name in files:
            path = Path(directory) / name
            path.unlink()
            removed.append(path)
        for name in subdirs:
            (Path(directory) / name).rmdir()
    root.rmdir()
    try:
        root.parent.rmdir()  # only succeeds once no program is loaded
    except OSError:
        pass
    return removed
