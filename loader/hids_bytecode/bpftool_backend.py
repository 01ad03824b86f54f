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
from .pins import free_pin_dir, unpin

__all__ = ["load_with_bpftool", "supports_autoattach"]


def _bpftool() -> str:
    found = shutil.which("bpftool")
    if not found:
        raise BpftoolError("bpftool not found on PATH (install bpftool, or use the default libbpf backend)")
    return found


def supports_autoattach(bpftool: str) -> bool:
    proc = subprocess.run([bpftool, "prog", "help"], capture_output=True, text=True)
    return "autoattach" in proc.stdout + proc.stderr


def load_with_bpftool(data: bytes, program: str) -> tuple[Path, list[ProgramReport]]:
    """Load the checked bytes with bpftool, pinning progs and maps under the program's pin dir."""
    bpftool = _bpftool()
    root = free_pin_dir(program)
    autoattach = supports_autoattach(bpftool)
    root.mkdir(parents=True)
    # bpftool reads a path, so it gets a private copy of the bytes whose hash was checked.
    with tempfile.NamedTemporaryFile(suffix=".o") as tmp:
        tmp.write(data)
        tmp.flush()
        argv = [bpftool, "prog", "loadall", tmp.name, str(root / "progs"), "pinmaps", str(root / "maps")]
        proc = subprocess.run(argv + (["autoattach"] if autoattach else []), capture_output=True, text=True)
    if proc.returncode != 0:
        unpin(program)
        lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["no message"]
        raise BpftoolError(f"bpftool prog loadall failed: {lines[-1].strip()}")
    status = "attached" if autoattach else "loaded, not attached"
    message = "" if autoattach else "this bpftool has no autoattach; use the libbpf backend to attach"
    reports = [ProgramReport(p.name, "", p.name.split("__", 1)[0], "", status, message)
               for p in sorted((root / "progs").iterdir())]
    return root, reports
