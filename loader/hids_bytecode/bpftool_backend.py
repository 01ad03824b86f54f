"""The alternative backend: `bpftool prog loadall OBJ DIR [autoattach]` loads and pins through
bpftool instead of the ctypes binding. bpftool before 7.2 has no `autoattach`; then programs are
loaded and pinned but not attached, and the report says so."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from .attach import ProgramReport
from .errors import BpftoolError

__all__ = ["load_with_bpftool", "supports_autoattach"]


def _bpftool() -> str:
    found = shutil.which("bpftool")
    if not found:
        raise BpftoolError("bpftool not found on PATH (install bpftool, or use the default libbpf backend)")
    return found


def supports_autoattach(bpftool: str) -> bool:
    proc = subprocess.run([bpftool, "prog", "help"], capture_output=True, text=True)
    return "autoattach" in proc.stdout + proc.stderr


def load_with_bpftool(data: bytes, staging: Path) -> list[ProgramReport]:
    """Load the checked bytes with bpftool, pinning progs and maps under `staging` (an empty
    staging dir the caller renames into place or discards)."""
    bpftool = _bpftool()
    autoattach = supports_autoattach(bpftool)
    # bpftool reads a path, so it gets a private copy of the bytes whose hash was checked.
    with tempfile.NamedTemporaryFile(suffix=".o") as tmp:
        tmp.write(data)
        tmp.flush()
        argv = [bpftool, "prog", "loadall", tmp.name, str(staging / "progs"), "pinmaps", str(staging / "maps")]
        proc = subprocess.run(argv + (["autoattach"] if autoattach else []), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["no message"]
        raise BpftoolError(f"bpftool prog loadall failed: {lines[-1].strip()}")
    status = "attached" if autoattach else "loaded, not attached"
    message = "" if autoattach else "this bpftool has no autoattach; use the libbpf backend to attach"
    return [ProgramReport(p.name, "", p.name.split("__", 1)[0], "", status, message)
            for p in sorted((staging / "progs").iterdir())]
