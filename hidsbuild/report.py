"""What the user sees: timed steps, the progress bar and the closing kernels x variants table."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

__all__ = ["console", "step", "UnitProgress", "ByteProgress", "summary_table", "skipped_report", "failure_report"]

console = Console(stderr=True, highlight=False)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Log a pipeline step with its duration."""
    start = time.monotonic()
    console.print(f"[bold]▶ {name}[/]")
    try:
        yield
    finally:
        console.print(f"  [dim]{name}: {time.monotonic() - start:.2f}s[/]")


class UnitProgress:
    """A progress bar over units: done/total, cache hits and failures so far."""

    def __init__(self, total: int, cached: int) -> None:
        # Imported here: a build of cached units shows no progress bar, and need not load it.
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.counts = Counter(cached=cached)
        self._progress = Progress(
            TextColumn("[bold]units"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console, transient=False,
        )
        self._task = self._progress.add_task("units", total=total, completed=cached, detail=self._detail())

    def _detail(self) -> str:
        return f"cache hits {self.counts['cached']}  built {self.counts['built']}  failed {self.counts['failed']}"

    def __enter__(self) -> UnitProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def done(self, status: str) -> None:
        self.counts[status] += 1
        self._progress.update(self._task, advance=1, detail=self._detail())


class ByteProgress:
    """A progress bar over bytes downloaded; `advance` is safe to call from worker threads."""

    def __init__(self, label: str, total: int) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                  TimeElapsedColumn(), console=console, transient=False)
        self._task = self._progress.add_task(label, total=total)

    def __enter__(self) -> ByteProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, count: int) -> None:
        self._progress.update(self._task, advance=count)


def summary_table(rows: dict[str, dict[str, Counter]], variants: list[str]) -> Table:
    """rows: target -> variant id -> Counter of statuses over programs."""
    table = Table(title="build-all: units per kernel and variant (w=syscall wrapper, d=debug)")
    table.add_column("kernel", no_wrap=True)
    for v in variants:
        table.add_column(v, justify="center")
    for target, cells in rows.items():
        rendered = []
        for v in variants:
            c = cells.get(v, Counter())
            parts = []
            if c["built"]:
                parts.append(f"[green]{c['built']} built[/]")
            if c["cached"]:
                parts.append(f"[cyan]{c['cached']} cached[/]")
            if c["failed"]:
                parts.append(f"[red]{c['failed']} failed[/]")
            if c["skipped"]:
                parts.append(f"[dim]{c['skipped']} skipped[/]")
            rendered.append(", ".join(parts) or "-")
        table.add_row(target, *rendered)
    return table


def skipped_report(skipped: list[tuple[str, str]]) -> None:
    """Which units were not built because they cannot run, one line per reason with its variants
    and how many kernels it spared."""
    by_reason: dict[str, list[str]] = {}
    for unit_id, reason in skipped:
        by_reason.setdefault(reason, []).append(unit_id)
    for reason, units in by_reason.items():
        variants = sorted({u.rsplit("/", 1)[1] for u in units})
        kernels = len({u.split("/")[1] for u in units})
        console.print(f"[dim]skipped {len(units)} unit(s) ({', '.join(variants)} on {kernels} kernel(s)): {reason}[/]",
                      soft_wrap=True)


def failure_report(failures: list[tuple[str, str]]) -> None:
    console.print(f"[bold red]{len(failures)} unit(s) failed:[/]")
    for unit_id, error in failures:
        console.print(f"[bold red]✗ {unit_id}[/]")
        console.print(error, markup=False, highlight=False, soft_wrap=True)
