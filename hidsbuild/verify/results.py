"""The VM proof's results, kernel x object x variant -> select / load / attach / event: the
per-kernel results, dist/verify.json, and the table shown on the console and saved as dist/verify.txt."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..artifacts import write_atomic
from ..errors import VerifyFailed
from ..kernels import Kernel

__all__ = [
    "NOT_RUN",
    "UNPROVED",
    "KernelResult",
    "failures",
    "merge_results",
    "read_json",
    "render_table",
    "unproved",
    "write_json",
    "write_text",
]

_OK = {"ok", "n/a"}
# The archive no longer serves the kernel's image (e.g. a superseded security upload): nothing could
# be booted, so nothing was proved or disproved. Reported, listed, but not a verification failure.
UNPROVED = "no image"
# A merge found no shard that verified the kernel: unproved as well, for the same reason.
NOT_RUN = "not verified"
_UNPROVED = (UNPROVED, NOT_RUN)


@dataclass
class KernelResult:
    release: str
    arch: str
    suite: str
    version: str
    status: str = "ok"  # ok | failed | boot failed | no wheel | no image (UNPROVED) | not verified (NOT_RUN)
    reason: str = ""
    uname: str = ""
    boot_seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    console_tail: str = ""  # the serial console's last lines, kept when the guest gave no result
    skipped: list[dict[str, Any]] = field(default_factory=list)  # units the build skipped here: unit, reason
    boot_retries: list[str] = field(default_factory=list)  # why each earlier boot died before /init

    @classmethod
    def of(cls, kernel: Kernel) -> KernelResult:
        return cls(kernel.release, kernel.arch, kernel.suite, kernel.version)

    def row_failed(self, row: dict[str, Any]) -> bool:
        return any(row[k] not in _OK for k in ("select", "load", "attach", "event"))

    def settle(self) -> None:
        """Set the kernel's status from its rows once they are all in."""
        if self.status == "ok" and any(self.row_failed(r) for r in self.rows):
            self.status = "failed"
            bad = sum(self.row_failed(r) for r in self.rows)
            self.reason = self.reason or f"{bad} of {len(self.rows)} object(s) failed"


def failures(results: list[KernelResult]) -> list[KernelResult]:
    return [r for r in results if r.status != "ok" and r.status not in _UNPROVED]


def unproved(results: list[KernelResult]) -> list[KernelResult]:
    return [r for r in results if r.status in _UNPROVED]


def write_json(results: list[KernelResult], path: Path, shard: str | None = None) -> None:
    doc = {"ok": not failures(results), "unproved": [r.release for r in unproved(results)],
           "kernels": [asdict(r) for r in results]}
    if shard:
        doc["shard"] = shard
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), 0o644)


def read_json(path: Path) -> tuple[Path, list[KernelResult]]:
    """A verify.json (of a shard) back as results; a missing or malformed file is one VerifyFailed line."""
    try:
        doc = json.loads(path.read_text())
        kernels = doc["kernels"]
        known = set(KernelResult.__dataclass_fields__)
        return path, [KernelResult(**{k: v for k, v in raw.items() if k in known}) for raw in kernels]
    except FileNotFoundError:
        raise VerifyFailed(f"{path}: no verify.json there (did that shard's `invoke verify` run?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise VerifyFailed(f"{path}: not a verify.json ({type(exc).__name__}: {exc})") from None


def merge_results(docs: list[tuple[Path, list[KernelResult]]], order: list[str]) -> list[KernelResult]:
    """The shards' results as one table, in `order` (kernels.yaml's), others after; a kernel that
    two shards report differently is refused, since one of them cannot be the proof."""
    merged: dict[str, tuple[Path, KernelResult]] = {}
    for path, results in docs:
        for result in results:
            seen = merged.get(result.release)
            if seen is not None and seen[1] != result:
                raise VerifyFailed(f"{result.release} is in {seen[0]} and {path} with different results; "
                                   "merge the shards of one run")
            merged.setdefault(result.release, (path, result))
    rank = {release: i for i, release in enumerate(order)}
    return [merged[r][1] for r in sorted(merged, key=lambda r: (rank.get(r, len(rank)), r))]


def _cell(value: str) -> str:
    colour = {"ok": "green", "n/a": "yellow", "not run": "dim"}.get(value, "red")
    return f"[{colour}]{value}[/]"


def render_table(results: list[KernelResult]) -> Table:
    table = Table(title="verify: each object in its own kernel's VM (select, verifier load, attach, event read back)")
    for name in ("kernel", "guest uname -r", "object / variant", "select", "load", "attach", "event", "note"):
        table.add_column(name, overflow="fold")
    for result in results:
        if not result.rows:
            colour = "yellow" if result.status in _UNPROVED else "red"
            table.add_row(result.release, result.uname or "-", "-", "-", "-", "-", "-",
                          f"[{colour}]{result.status}[/]: {result.reason}")
            continue
        for row in result.rows:
            note = row.get("error") or _na_note(row) or ", ".join(f"{k} {v}" for k, v in sorted(row["events"].items()))
            program, variant = row["unit"].split("/", 1)[0], row["unit"].rsplit("/", 1)[-1]
            table.add_row(result.release, result.uname, f"{program} {variant}",
                          *(_cell(row[k]) for k in ("select", "load", "attach", "event")), note)
    return table


def _na_note(row: dict[str, Any]) -> str:
    na = [p for p in row.get("programs", []) if p["status"] == "n/a"]
    notes = [f"kprobe attach n/a ({len(na)} programs): {na[0]['message']}"] if na else []
    kinds = {k: c["n/a"][0] for k, c in sorted(row.get("kinds", {}).items()) if isinstance(c, dict) and c.get("n/a")}
    notes += [f"{kind} n/a: {proof}" for kind, proof in kinds.items()]
    return "; ".join(notes)


def write_text(results: list[KernelResult], path: Path) -> None:
    """The table plus the verifier log of every failed load, as plain text."""
    with open(os.devnull, "w") as sink:
        console = Console(record=True, width=200, file=sink, color_system=None)
        console.print(render_table(results))
        for result in (r for r in results if r.boot_retries):
            console.print(f"\n{result.release}: booted again after {len(result.boot_retries)} boot(s) that died "
                          "before /init (no check had run):", markup=False)
            for problem in result.boot_retries:
                console.print(f"  {problem}", markup=False, highlight=False)
        for result in failures(results) + unproved(results):
            console.print(f"\n{result.release}: {result.status}: {result.reason}", markup=False)
            if result.console_tail:
                console.print(result.console_tail, markup=False, highlight=False)
            for row in (r for r in result.rows if result.row_failed(r)):
                console.print(f"--- {row['unit']}: {row['error']}", markup=False)
                if row.get("verifier_log"):
                    console.print(row["verifier_log"], markup=False, highlight=False)
    write_atomic(path, console.export_text().encode(), 0o644)
