"""dist/compat.html: the verification matrix as one static page, kernels x programs x variants,
each cell coloured by outcome and opening its notes, event counts and verifier log.

Self-contained (inline CSS and a few lines of JS, no external asset), so it can be attached to a CI
run or opened from disk; the cells are <details>, so they open without JS too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import write_atomic
from ..templating import render
from .results import KernelResult, failures, unproved

__all__ = ["OUTCOMES", "Cell", "grid", "na_kinds", "render_page", "write_page"]

# Outcome of a cell -> what the legend says it means.
OUTCOMES = {
    "ok": "selected, loaded, attached, events read back",
    "n/a": "proved, with programs or events marked n/a by the guest's own facts",
    "fail": "a step failed: the cell holds the error and the verifier log",
    "skipped": "not built: cannot run on this kernel (reason inside)",
    "unproved": "kernel not booted: no image served, or no shard verified it",
    "down": "the guest gave no result (boot failed, timeout, no wheel)",
    "absent": "no such object for this kernel",
}
_STEPS = ("select", "load", "attach", "event")


@dataclass
class Cell:
    outcome: str
    label: str
    unit: str = ""
    row: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # for cells without a row: why


def _column(unit: str) -> tuple[str, str]:
    """(program, variant) of a unit; the CO-RE object checked in a kernel's guest is its own column."""
    program, target, variant = unit.split("/")
    return program, f"core {variant}" if target.startswith("core-") else variant


def _variant_key(variant: str) -> tuple[int, str]:
    return (1 if variant.startswith("core") else 0 if variant.startswith("w1") else 2, variant)


def _row_outcome(row: dict[str, Any]) -> str:
    values = [row.get(k) for k in _STEPS]
    if any(v not in ("ok", "n/a") for v in values):
        return "fail"
    if "n/a" in values or any(p.get("status") == "n/a" for p in row.get("programs", [])) or na_kinds(row):
        return "n/a"
    return "ok"


def na_kinds(row: dict[str, Any]) -> dict[str, list[str]]:
    """Event kinds some expectation of which the guest proved impossible there -> its proofs."""
    kinds = row.get("kinds")
    if not isinstance(kinds, dict):
        return {}
    return {k: c["n/a"] for k, c in sorted(kinds.items()) if isinstance(c, dict) and c.get("n/a")}


def proved_kinds(row: dict[str, Any]) -> list[str]:
    """Event kinds the guest proved for this object: checked field by field where the guest
    reports per-kind checks, else read back at least once."""
    kinds = row.get("kinds")
    if isinstance(kinds, dict) and kinds:
        return sorted(k for k, c in kinds.items() if isinstance(c, dict) and c.get("status") == "ok")
    return sorted(k for k, n in row.get("events", {}).items() if n)


def grid(results: list[KernelResult]) -> tuple[list[tuple[str, str]], list[tuple[KernelResult, list[Cell]]]]:
    """Columns (program, variant) and one row of cells per kernel, in the results' order."""
    units = [r["unit"] for res in results for r in res.rows] + [s["unit"] for res in results for s in res.skipped]
    columns = sorted({_column(u) for u in units}, key=lambda c: (c[0], _variant_key(c[1])))
    table = []
    for res in results:
        rows = {_column(r["unit"]): r for r in res.rows}
        skipped = {_column(s["unit"]): s for s in res.skipped}
        cells = []
        for column in columns:
            if column in rows:
                row = rows[column]
                outcome = _row_outcome(row)
                cells.append(Cell(outcome, outcome, row["unit"], row))
            elif column in skipped:
                cells.append(Cell("skipped", "skip", skipped[column]["unit"], reason=skipped[column]["reason"]))
            elif not res.rows and res.status != "ok":
                outcome = "unproved" if unproved([res]) else "down"
                cells.append(Cell(outcome, res.status, reason=res.reason))
            else:
                cells.append(Cell("absent", "-"))
        table.append((res, cells))
    return columns, table


def summary(results: list[KernelResult]) -> dict[str, int]:
    rows = [r for res in results for r in res.rows]
    return {
        "kernels": len(results),
        "kernels_ok": sum(r.status == "ok" for r in results),
        "kernels_failed": len(failures(results)),
        "kernels_unproved": len(unproved(results)),
        "objects": len(rows),
        "objects_proved": sum(_row_outcome(r) != "fail" for r in rows),
        "skipped": sum(len(res.skipped) for res in results),
        "kinds_proved": sum(len(proved_kinds(r)) for r in rows),
        "events_read": sum(n for r in rows for n in r.get("events", {}).values() if isinstance(n, int)),
    }


def render_page(results: list[KernelResult]) -> str:
    columns, table = grid(results)
    return render("compat.html.j2",
        columns=columns, table=table, totals=summary(results), outcomes=OUTCOMES, steps=_STEPS,
        proved_kinds=proved_kinds, na_kinds=na_kinds)


def write_page(results: list[KernelResult], path: Path) -> None:
    """Render and write atomically: a reader never sees half a page."""
    write_atomic(path, render_page(results).encode(), 0o644)
