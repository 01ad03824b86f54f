"""One boot of a kernel under qemu's TCG (KVM is present on the build host but unusable), with the
serial console captured and the guest's JSON result cut out of it. Boots may run in threads side by
side; `stop_all` kills every running guest at once (Ctrl-C, SIGTERM)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hids_bytecode.arches import ARCHES

__all__ = ["BEGIN", "END", "Boot", "boot", "qemu_command", "stop_all"]

# The same markers as guest_check.py prints (it runs in the guest and cannot import this module).
BEGIN, END = "===HIDS-VERIFY-BEGIN===", "===HIDS-VERIFY-END==="
_APPEND = "console={console} rdinit=/init panic=-1 quiet"
_CRASH_MARKS = ("Oops:", "Kernel panic", "BUG:", "Unable to handle kernel")
# One vCPU: with two, bookworm's qemu 7.2 TCG intermittently breaks the IRET-to-self of an IPI'd
# do_sync_core and 6.12.95+deb12 oopses at boot (general protection fault); with one it always boots.
_CPUS = 1
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc")
_running: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()


@dataclass(frozen=True)
class Boot:
    result: dict[str, Any] | None  # the guest's document, None when it never printed one
    console: str
    timed_out: bool
    seconds: float
    timeout: float

    @property
    def problem(self) -> str:
        """Why no result came back: the kernel's first oops or panic line, else the console's last lines."""
        if self.result is not None:
            return ""
        lines = [line.strip() for line in self.console.strip().splitlines()]
        crash = next((line for line in lines if any(mark in line for mark in _CRASH_MARKS)), None)
        detail = crash or " | ".join(lines[-4:]) or "no console output"
        what = f"no result within the {self.timeout:g}s timeout" if self.timed_out else "guest stopped without a result"
        return f"{what}: {detail}"

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console.strip().splitlines()[-lines:])


def qemu_command(arch: str, vmlinuz: Path, initrd: Path, memory_mb: int = 1024, cpus: int = _CPUS) -> list[str]:
    row = ARCHES[arch]  # emulator, machine, cpu and console
    return [row.qemu, "-M", row.qemu_machine, "-cpu", row.qemu_cpu, "-accel", "tcg", "-smp", str(cpus),
            "-m", str(memory_mb), "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", _APPEND.format(console=row.console), "-nographic", "-no-reboot",
            "-nodefaults", "-serial", "stdio", "-monitor", "none"]


def boot(arch: str, vmlinuz: Path, initrd: Path, timeout: float) -> Boot:
    """Boot, wait for power-off or the timeout (then kill qemu), and parse the result."""
    start = time.monotonic()
    proc = subprocess.Popen(qemu_command(arch, vmlinuz, initrd), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with _lock:
        _running.add(proc)
        if _stopping.is_set():  # started by a thread that raced stop_all
            proc.kill()
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    finally:
        with _lock:
            _running.discard(proc)
    console = _ANSI.sub("", out.decode(errors="replace")).replace("\r\n", "\n")
    return Boot(_result(console), console, timed_out, time.monotonic() - start, timeout)


def stop_all() -> None:
    """Kill every guest still running: their boots then return at once, without a result."""
    with _lock:
        _stopping.set()
        for proc in _running:
            proc.kill()


def _result(console: str) -> dict[str, Any] | None:
    begin = console.rfind(BEGIN)
    end = console.find(END, begin)
    if begin < 0 or end < 0:
        return None
    try:
        return json.loads(console[begin + len(BEGIN):end])
    except json.JSONDecodeError:
        return None
